"""Training room: finetune (strategies, feature cache, auto), evaluation and export."""
