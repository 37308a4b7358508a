"""Fine-tuning (Starbucks SRL, 2DMSE, MRL, single size) and SMAE pre-training."""
