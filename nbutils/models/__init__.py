"""Models: image processors (PIL backend), locally trained tokenizers, CLIP-style dual encoders."""
