from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="nnunetv2-mamba",
    version="0.1.0",
    description="Mamba state-space networks and scribble-supervised training for nnU-Net v2",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["nnunetv2_mamba", "nnunetv2_mamba.*"]) + ["nnunetv2_mamba.plans_overrides"],
    # plans_overrides/<Arch>.json live at the repository root and are installed as nnunetv2_mamba.plans_overrides
    package_dir={"nnunetv2_mamba.plans_overrides": "plans_overrides"},
    # the fused CPU selective scan is compiled from its source on first use (nnunetv2_mamba/ssm/ops/selective_scan_cpu.py)
    package_data={"nnunetv2_mamba.plans_overrides": ["*.json"], "nnunetv2_mamba.ssm.ops": ["csrc/*.cpp"]},
    install_requires=[
        "nnunetv2>=2.8.1,<2.9",
        "dynamic-network-architectures>=0.4.3,<0.5",
        "torch>=2.4",  # torch.is_autocast_enabled(device_type)
        "timm>=1.0,<2",
        "h5py>=3.10,<4",
        "numpy>=1.26,<3",
        "scipy>=1.11,<2",
        "scikit-image>=0.22,<1",
        "SimpleITK>=2.3,<3",
        "matplotlib>=3.8,<4",
        "tqdm>=4.66,<5",
        "filelock>=3.12,<5",  # the benchmarks' training lock (benchmarks/acdc_scribble.py)
        "ninja>=1.11,<2",  # torch's JIT extension builder, for the fused CPU selective scan
    ],
    extras_require={
        # CUDA kernels; build them as their README says (--no-build-isolation). Optional: the pure path always works.
        "cuda": ["mamba-ssm>=2.2,<3", "causal-conv1d>=1.4,<2"],
        "test": ["pytest>=8,<10", "pytest-timeout>=2.3,<3", "pytest-xdist>=3.6,<4"],
        # Baselines measured by benchmarks/ssm_speed.py.
        "bench": ["mambapy==1.2.0"],
    },
    entry_points={"console_scripts": ["nnunetv2_mamba=nnunetv2_mamba.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: Apache Software License",
        "Topic :: Scientific/Engineering :: Medical Science Apps.",
    ],
)
