"""Import the command-line tools (which live outside the package) in tests."""
import importlib.util
import os.path as osp

from conftest import REPO_ROOT


def _load(name, *parts):
    spec = importlib.util.spec_from_file_location(name, osp.join(REPO_ROOT, 'tools', *parts))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


official2mm = _load('official2mm', 'model_converters', 'official2mm.py')


def load_tool(*parts):
    """A fresh module of the tool at ``tools/<parts>``, e.g. ``load_tool('test.py')``."""
    return _load('_tool_' + '_'.join(parts)[:-3].replace('/', '_'), *parts)
