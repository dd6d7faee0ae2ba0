"""Training with Lightning: the LightningModule, its callbacks, checkpointing and one run from config."""
