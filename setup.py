"""mmgroupmamba: GroupMamba backbones for mmpretrain, mmdet and mmseg."""
import os
import os.path as osp
import shutil
import sys

from setuptools import find_packages, setup

ROOT = osp.dirname(osp.abspath(__file__))
# What OpenMMLab packages ship under <package>/.mim: the configs, the tools and the model
# index, so that an installed package finds its configs by model name
# (mmpretrain.get_model, `mim search`) without the source tree.
MIM_FILES = ('configs', 'tools', 'model-index.yml')


def read_requirements(name):
    path = osp.join(osp.dirname(__file__), 'requirements', name)
    with open(path) as f:
        return [line.split('#')[0].strip() for line in f
                if line.split('#')[0].strip()]


def add_mim_extension():
    """Put :data:`MIM_FILES` into ``mmgroupmamba/.mim``: as links to the originals for an
    editable install (edits show at once), as copies when a wheel or sdist is built."""
    commands = set(sys.argv[1:])
    if commands & {'develop', 'editable_wheel'}:
        mode = 'copy' if os.name == 'nt' else 'symlink'
    elif commands & {'bdist_wheel', 'sdist', 'build', 'build_py', 'install'}:
        mode = 'copy'
    else:  # egg_info, dist_info, ...: nothing is built
        return
    mim_dir = osp.join(ROOT, 'mmgroupmamba', '.mim')
    os.makedirs(mim_dir, exist_ok=True)
    for name in MIM_FILES:
        src, dst = osp.join(ROOT, name), osp.join(mim_dir, name)
        if osp.islink(dst) or osp.isfile(dst):
            os.remove(dst)
        elif osp.isdir(dst):
            shutil.rmtree(dst)
        if mode == 'symlink':
            os.symlink(osp.relpath(src, mim_dir), dst)
        elif osp.isdir(src):
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))
        else:
            shutil.copyfile(src, dst)


def read_version():
    scope = {}
    with open(osp.join(osp.dirname(__file__), 'mmgroupmamba', 'version.py')) as f:
        exec(f.read(), scope)
    return scope['__version__']


add_mim_extension()
setup(
    name='mmgroupmamba',
    version=read_version(),
    description='GroupMamba (group visual state-space model) backbones for OpenMMLab',
    long_description=open('README.md').read() if osp.exists('README.md') else '',
    long_description_content_type='text/markdown',
    packages=find_packages(exclude=('configs', 'tools', 'tests')),
    package_data={'mmgroupmamba': [
        '.mim/model-index.yml', '.mim/configs/**/*.py', '.mim/configs/**/*.yml',
        '.mim/tools/**/*.py', '.mim/tools/**/*.sh']},
    python_requires='>=3.8',
    # torch and mmcv (built with ops, against that torch) are installed by
    # tools/setup_env.sh; they are not listed here so pip never replaces them.
    install_requires=read_requirements('runtime.txt'),
    extras_require={
        'tests': read_requirements('tests.txt'),
        'optional': read_requirements('optional.txt'),
        'cuda': read_requirements('cuda.txt'),
    },
    license='Apache-2.0',
    zip_safe=False,
)
