"""What trains the networks: synthetic T2s with known PVS (synthesis, trainingdata), the training
loop (training) and fine-tuning of the output layers on a cohort with visual scores (finetune)."""
