"""imgclust: cluster any folder of unlabelled images with pretrained encoders, and score the result."""

__version__ = "0.1.0.dev0"
