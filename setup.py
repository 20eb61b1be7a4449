"""repseg: RepVGG classification and semantic segmentation on the OpenMMLab stack."""
from pathlib import Path

from setuptools import find_packages, setup

README = Path(__file__).with_name('README.md')
MMCV_RANGE = 'mmcv>=2.0.0rc4,<2.2.0'  # mmseg 1.2 asserts this range at import

setup(
    name='repseg',
    version='0.1.0',
    description='RepVGG (arXiv 2101.03697) backbones, exact re-parameterization and '
                'PSPNet segmentation on mmsegmentation',
    long_description=README.read_text(encoding='utf-8') if README.exists() else '',
    long_description_content_type='text/markdown',
    packages=find_packages(include=['repseg', 'repseg.*']),
    python_requires='>=3.10',
    # Ranges a GPU user can satisfy; requirements-ci.txt pins what CI runs.
    install_requires=[
        'torch>=2.1',
        'torchvision',
        'mmengine>=0.10,<0.11',
        # mmcv comes as an extra: 'repseg[lite]' (pure Python, enough for PSPNet) or
        # 'repseg[full]' (compiled ops, built against your torch). Both provide the
        # `mmcv` package, so neither can be a hard requirement; repseg checks at import.
        'mmsegmentation>=1.2,<1.3',
        'opencv-python',
        'numpy<2.4',          # 2.4 removed np.in1d (cityscapesscripts evaluation)
        'pillow<13',          # 13 cannot write mode-I PNGs (cityscapesscripts)
        'setuptools<82',      # 82 removed pkg_resources (mmengine's mmseg:: config paths)
        'ftfy',               # imported by mmseg without being declared
        'regex',              # imported by mmseg without being declared
        'cityscapesscripts',
        'tqdm',
        'safetensors>=0.4',   # timm's published weights, read whatever torch.load accepts
        'huggingface_hub>=0.20',  # hub names (timm/repvgg_b2.rvgg_in1k) and their cache
    ],
    extras_require={
        'lite': [MMCV_RANGE.replace('mmcv', 'mmcv-lite', 1)],
        'full': [MMCV_RANGE],
        'onnx': ['onnx', 'onnxruntime'],
        'tensorboard': ['tensorboard>=2.10'],  # tools/train.py --tensorboard
        'cls': ['mmpretrain>=1.2,<1.3'],  # classification: configs/classification, classify
        'test': ['pytest', 'timm', 'mmpretrain>=1.2', 'onnx', 'onnxruntime',
                 'tensorboard>=2.10'],
    },
)
