"""What works on a cohort: agreement with visual scores and the statistics of the paper."""
