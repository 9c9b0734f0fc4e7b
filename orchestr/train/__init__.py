"""`orchestr train`: SFT / LoRA / DPO on transformers + TRL + PEFT, from the `train` config."""
