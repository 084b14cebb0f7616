"""glow-tf: Glow (Kingma & Dhariwal 2018) in TensorFlow 2 as TFP bijectors."""

from setuptools import find_packages, setup

# Versions tested together on Python 3.11 (CPU); TFP 0.25 needs tf-keras to import.
INSTALL_REQUIRES = [
    "tensorflow==2.21.0",
    "tensorflow-probability==0.25.0",
    "tf-keras==2.21.0",
    "tensorflow-datasets==4.9.10",
    "importlib_resources==7.1.0",  # TFDS 4.9.10 imports it when it downloads or builds a dataset
    "tensorboard==2.21.0",  # summaries are read back in tests; `tensorboard --logdir` for users
    "numpy==2.4.6",
    "absl-py==2.5.1",
    "ml_collections==1.1.0",  # config files with typed command-line overrides
    "scikit-learn==1.9.1",  # the bundled 8x8 digits: the offline quick start
    "matplotlib==3.11.2",  # glow-score compare: the bits/dim histogram
]

TEST_REQUIRES = [
    "pytest==9.0.3",
    "ruff==0.17.6",
]

setup(
    name="glow-tf",
    version="0.1.0",
    description="Glow generative flow in TensorFlow 2, every layer a tfp.bijectors.Bijector",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["glow_tf", "glow_tf.*"]),
    python_requires=">=3.10,<3.13",
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": TEST_REQUIRES, "bench": ["torch==2.13.0"]},
    entry_points={
        "console_scripts": [
            "glow-convert = glow_tf.convert:main",
            "glow-export = glow_tf.export:main",
            "glow-relayout = glow_tf.relayout:main",
            "glow-sample = glow_tf.sample:main",
            "glow-score = glow_tf.score:main",
        ],
    },
    license="MIT",
)
