"""Fine-tuning defaults, and where they come from (standard library only: the command line
reads them without importing torch)."""

LR = 1e-4  # MedSAM (AdamW 1e-4) and the Encord guide (1e-4), both decoder-only
WEIGHT_DECAY = 0.01  # MedSAM (AdamW, weight decay 0.01)
BATCH_SIZE = 8  # objects per optimiser step
EPOCHS = 10
PROMPT_ITERATIONS = 3  # 1 initial prompt + 2 correction points (SAM used 1 + 8 + 2 without a new point)
BOX_SHARE = 0.5  # chance that the first prompt is a box rather than a point (SAM: equal)
VAL_FRACTION = 0.2
