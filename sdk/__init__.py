"""shelfedge SDK: load a bundle, classify a frame, the same answers on every device.

Example::

    import sdk

    options = sdk.ClassifierOptions(profile="x86-kiosk-cpu", top_k=3)
    with sdk.ImageClassifier.create("bundles/grocery-tflite-fp32", options) as clf:
        print(clf.classify("apple.jpg").top1)
"""

from __future__ import annotations

from sdk.bundle import Bundle
from sdk.classifier import Category, ClassificationResult, ClassifierOptions, ImageClassifier, Timings
from sdk.embedder import EmbedderOptions, Embedding, ImageEmbedder
from sdk.enums import Device, FallbackPolicy, ModelFormat, Precision, Runtime, Task
from sdk.errors import (
    BackendUnavailableError,
    BundleError,
    ConfigError,
    ConversionError,
    DecryptionError,
    InferenceError,
    InputError,
    ManifestError,
    ParityError,
    ProfileError,
    ShelfedgeError,
    SignatureError,
)
from sdk.loading import Model, load
from sdk.manifest import Manifest
from sdk.profiles import HardwareProfile, list_profiles, load_profile
from sdk.recommender import Recommender
from sdk.recommender_result import Recommendations, RecommendedItem, RecommenderOptions, RecTimings

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError",
    "Bundle",
    "BundleError",
    "Category",
    "ClassificationResult",
    "ClassifierOptions",
    "ConfigError",
    "ConversionError",
    "DecryptionError",
    "Device",
    "EmbedderOptions",
    "Embedding",
    "FallbackPolicy",
    "HardwareProfile",
    "ImageClassifier",
    "ImageEmbedder",
    "InferenceError",
    "InputError",
    "Manifest",
    "ManifestError",
    "Model",
    "ModelFormat",
    "ParityError",
    "Precision",
    "ProfileError",
    "RecTimings",
    "Recommendations",
    "RecommendedItem",
    "Recommender",
    "RecommenderOptions",
    "Runtime",
    "ShelfedgeError",
    "SignatureError",
    "Task",
    "Timings",
    "list_profiles",
    "load",
    "load_profile",
]
