"""mmgroupmamba: GroupMamba backbones for mmpretrain, mmdet and mmseg."""
import os.path as osp

from setuptools import find_packages, setup


def read_requirements(name):
    path = osp.join(osp.dirname(__file__), 'requirements', name)
    with open(path) as f:
        return [line.split('#')[0].strip() for line in f
                if line.split('#')[0].strip()]


def read_version():
    scope = {}
    with open(osp.join(osp.dirname(__file__), 'mmgroupmamba', 'version.py')) as f:
        exec(f.read(), scope)
    return scope['__version__']


setup(
    name='mmgroupmamba',
    version=read_version(),
    description='GroupMamba (group visual state-space model) backbones for OpenMMLab',
    long_description=open('README.md').read() if osp.exists('README.md') else '',
    long_description_content_type='text/markdown',
    packages=find_packages(exclude=('configs', 'tools', 'tests')),
    python_requires='>=3.8',
    # torch and mmcv (built with ops, against that torch) are installed by
    # tools/setup_env.sh; they are not listed here so pip never replaces them.
    install_requires=read_requirements('runtime.txt'),
    extras_require={
        'tests': read_requirements('tests.txt'),
        'distill': read_requirements('optional.txt'),
        'cuda': read_requirements('cuda.txt'),
    },
    license='Apache-2.0',
    zip_safe=False,
)
