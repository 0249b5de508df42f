"""nbutils: the tested engine behind the image-text workbench notebooks.

One module per concept:
    io            atomic writes, JSON summaries, readable errors (DataError)
    demo_data     a synthetic captioned image set that models can genuinely learn
    importers     readers for published caption layouts (Flickr, COCO, AI Challenger, ...)
    captions      caption normalisation
    splits        cleaning and image-level train/val/test splits
    image_cache   a packed uint8 image cache and the Dataset/collator that read it
    plotting      the figures notebooks show
    runner        papermill runner: `python -m nbutils run --profile demo`
"""

__version__ = "0.1.0"
