"""Task images: fetched under one URL policy with size and time caps (``fetcher``), cached by content hash on
disk (``cache``)."""

from active_learning.images.cache import ImageCache, cache_labeled_images, cache_task_image
from active_learning.images.fetcher import FetchedImage, ImageError, ImageFetcher, decode

__all__ = ["FetchedImage", "ImageCache", "ImageError", "ImageFetcher", "cache_labeled_images", "cache_task_image",
           "decode"]
