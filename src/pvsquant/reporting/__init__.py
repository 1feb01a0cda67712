"""What people look at: figures (PNG) and the subject's HTML report, from saved outputs."""
