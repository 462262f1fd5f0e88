"""Faults during real CPU runs of the classification demo through tools/train.py and
tools/test.py: a SIGKILL in the middle of an epoch, a SIGKILL in the middle of writing a
checkpoint (both then ``--resume``), and 2-process DDP (gloo), with and without
``frozen_stages`` and with stages after the last output (no gradient)."""
import glob
import os.path as osp
import pickle
import signal

import pytest
import torch
from mmengine.registry import DefaultScope

import mmgroupmamba  # noqa: F401
from demo_runs import check, child_env, logged_losses, run_tool, write_demo_config
from mmgroupmamba.datasets import generate_classification_set
from mmgroupmamba.utils import load_checkpoint_file
from tools_import import load_tool

EPOCHS = 3
ITERS_PER_EPOCH = 4  # 4 images per class x 8 classes at batch 8


@pytest.fixture(scope='module')
def shapes(tmp_path_factory):
    return generate_classification_set(str(tmp_path_factory.mktemp('shapes')),
                                       num_train_per_class=4, num_val_per_class=2,
                                       image_size=32)


@pytest.fixture(scope='module')
def straight(shapes, tmp_path_factory):
    """The uninterrupted run: 3 epochs (12 iterations), its losses and last checkpoint."""
    root = tmp_path_factory.mktemp('straight')
    cfg = write_demo_config(root / 'demo.py', shapes, max_epochs=EPOCHS)
    work = str(root / 'work')
    result = run_tool('train', cfg, '--work-dir', work)
    check(result)
    (losses, ) = logged_losses(work)
    assert sorted(losses) == list(range(1, EPOCHS * ITERS_PER_EPOCH + 1))
    return dict(cfg=cfg, data_root=shapes, losses=losses,
                final=load_checkpoint_file(osp.join(work, f'epoch_{EPOCHS}.pth')))


def _assert_resumed_run_matches(work, straight, killed_after):
    killed, resumed = logged_losses(work)
    # the killed run logged the same losses as the straight one up to its death
    assert sorted(killed) == list(range(1, killed_after + 1))
    for step, loss in killed.items():
        assert loss == straight['losses'][step], (step, loss, straight['losses'][step])
    # the resumed run restarts after the last complete checkpoint (epoch 1) and then
    # reaches the same losses step for step (bit for bit) as the uninterrupted run
    assert sorted(resumed) == list(range(ITERS_PER_EPOCH + 1, EPOCHS * ITERS_PER_EPOCH + 1))
    for step, loss in resumed.items():
        assert loss == straight['losses'][step], (step, loss, straight['losses'][step])
    final = load_checkpoint_file(osp.join(work, f'epoch_{EPOCHS}.pth'))
    for key in ('state_dict', 'optimizer'):
        assert _flatten(final[key]) == _flatten(straight['final'][key]), key


def _flatten(tree, prefix=''):
    """Nested dicts/lists of tensors and numbers as {path: value} with tensors as bytes,
    for exact comparison."""
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, (list, tuple)):
        items = enumerate(tree)
    else:
        return {prefix: tree.numpy().tobytes() if torch.is_tensor(tree) else tree}
    out = {}
    for k, v in items:
        out.update(_flatten(v, f'{prefix}/{k}'))
    return out


def test_sigkill_mid_epoch_then_resume_is_exact(straight, tmp_path):
    work = str(tmp_path / 'work')
    kill_at = ITERS_PER_EPOCH + 2  # the middle of epoch 2
    kill_cfg = write_demo_config(
        tmp_path / 'kill.py', straight['data_root'], max_epochs=EPOCHS,
        custom_hooks=f"dict(type='StepSeedHook'), "
        f"dict(type='SigkillAfterIter', iteration={kill_at})")
    result = run_tool('train', kill_cfg, '--work-dir', work)
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    assert open(osp.join(work, 'last_checkpoint')).read() == osp.join(work, 'epoch_1.pth')

    result = run_tool('train', straight['cfg'], '--work-dir', work, '--resume')
    check(result)
    _assert_resumed_run_matches(work, straight, killed_after=kill_at)


def test_sigkill_while_saving_keeps_the_last_checkpoint(straight, tmp_path):
    """Killed half way through writing epoch_2.pth: epoch_1.pth (the demo keeps one
    checkpoint, max_keep_ckpts=1) and last_checkpoint are untouched, no truncated
    epoch_2.pth exists, and --resume continues exactly."""
    work = str(tmp_path / 'work')
    result = run_tool('train', straight['cfg'], '--work-dir', work,
                      env=child_env(FAULT_KILL_WRITING='epoch_2.pth'))
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    assert not osp.exists(osp.join(work, 'epoch_2.pth'))
    # what the killed write left: half a checkpoint under a temporary name
    (partial, ) = glob.glob(osp.join(work, '.epoch_2.pth.*.tmp'))
    assert 0 < osp.getsize(partial)
    assert open(osp.join(work, 'last_checkpoint')).read() == osp.join(work, 'epoch_1.pth')
    epoch_1 = load_checkpoint_file(osp.join(work, 'epoch_1.pth'))
    assert epoch_1['meta']['epoch'] == 1

    result = run_tool('train', straight['cfg'], '--work-dir', work, '--resume')
    check(result)
    _assert_resumed_run_matches(work, straight, killed_after=2 * ITERS_PER_EPOCH)
    assert not osp.exists(osp.join(work, 'epoch_1.pth'))  # max_keep_ckpts=1 still holds
    assert not glob.glob(osp.join(work, '.*.tmp'))  # the partial file is cleaned up


# --------------------------------------------------------------------------------- DDP
def _evaluate(cfg, ckpt, work, nproc):
    """tools/test.py CKPT with ``nproc`` processes (1: in this process); the predictions
    by image."""
    out = osp.join(work, f'preds_{nproc}.pkl')
    args = [cfg, ckpt, '--work-dir', work, '--out', out]
    if nproc == 1:
        with DefaultScope.overwrite_default_scope('mmpretrain'):
            load_tool('test.py').main(args)
    else:
        check(run_tool('test', *args, nproc=nproc))
    with open(out, 'rb') as f:
        preds = {p['img_path']: p for p in pickle.load(f)}
    return preds


def _assert_same_evaluation(cfg, ckpt, work, num_images):
    one, two = _evaluate(cfg, ckpt, work, 1), _evaluate(cfg, ckpt, work, 2)
    assert len(one) == len(two) == num_images
    for path, pred in one.items():
        torch.testing.assert_close(two[path]['pred_score'], pred['pred_score'],
                                   rtol=1e-5, atol=1e-6)
        assert two[path]['pred_label'] == pred['pred_label']


def test_ddp_two_processes_train_and_evaluate_as_one(shapes, tmp_path):
    """2-process gloo DDP training (tools/train.py under torchrun), then the checkpoint
    evaluated by 1 and by 2 processes: the same scores for every image. Then a second
    DDP run from that checkpoint with frozen_stages=1 and out_indices=(2, ) (stage 3
    gets no gradient: without the backbone leaving it out, DDP stops at the second
    iteration): frozen and unused stages keep their weights, stage 2 trains."""
    base = write_demo_config(tmp_path / 'demo.py', shapes, max_epochs=1)
    work = str(tmp_path / 'ddp')
    result = run_tool('train', base, '--work-dir', work, nproc=2)
    check(result)
    ckpt = osp.join(work, 'epoch_1.pth')
    (losses, ) = logged_losses(work)
    assert len(losses) == ITERS_PER_EPOCH // 2  # each process has half the data
    _assert_same_evaluation(base, ckpt, work, num_images=16)

    frozen_cfg = write_demo_config(tmp_path / 'frozen.py', shapes, max_epochs=1, extra=[
        "model = dict(backbone=dict(frozen_stages=1, out_indices=(2, )), "
        "head=dict(in_channels=96))",
        f"load_from = '{ckpt}'"])
    frozen_work = str(tmp_path / 'ddp_frozen')
    result = run_tool('train', frozen_cfg, '--work-dir', frozen_work, nproc=2)
    check(result)
    before = load_checkpoint_file(ckpt)['state_dict']
    after = load_checkpoint_file(osp.join(frozen_work, 'epoch_1.pth'))['state_dict']
    for name, value in before.items():
        if not name.startswith('backbone.'):
            continue
        part = name.split('.')  # backbone.{stages,patch_embeds}.i.* or backbone.norm<i>.*
        stage = int(part[2]) if part[1] in ('stages', 'patch_embeds') else int(part[1][-1])
        if stage in (0, 1, 3) or 'running' in name or 'num_batches' in name:
            assert torch.equal(after[name], value), name  # frozen, or no gradient
        elif name.endswith('.weight') and stage == 2:
            assert not torch.equal(after[name], value), name  # trained
    _assert_same_evaluation(frozen_cfg, osp.join(frozen_work, 'epoch_1.pth'),
                            frozen_work, num_images=16)
