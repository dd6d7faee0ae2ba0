"""Reading and writing what training, data and inference share: checkpoints, HF model directories, the export
and its model card."""
