"""The models: the CLIP backbone, the prompted encoders, DGL's generators and attention, and the methods."""
