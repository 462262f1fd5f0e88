"""Checkpoint saving that a killed run cannot turn into a lost checkpoint."""
import os.path as osp

from mmengine.dist import is_main_process
from mmengine.fileio.backends import LocalBackend
from mmengine.hooks import CheckpointHook
from mmengine.registry import HOOKS

from mmgroupmamba.utils.checkpoint_io import atomic_write, remove_stale_temporaries


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """mmengine's ``CheckpointHook``, with the last good checkpoint kept until the next
    one is complete.

    mmengine 0.10.7 deletes the oldest kept checkpoint (``max_keep_ckpts``) *before*
    writing the new one and rewrites ``last_checkpoint`` in place: with
    ``max_keep_ckpts=1``, a run killed while saving is left with no checkpoint, and
    ``--resume`` with a pointer to a deleted file. Here the new checkpoint is written
    first (atomically: importing mmgroupmamba makes mmengine's local file writes go
    through a temporary file and a rename), then ``last_checkpoint`` is replaced
    atomically, and only then are old checkpoints deleted (and what an earlier killed
    write of the same file left). A run killed at any moment resumes from the newest
    complete checkpoint. Arguments as ``CheckpointHook``.
    """

    def _save_checkpoint_with_step(self, runner, step, meta):
        # the ids to keep are updated before saving, so that the saved message hub holds
        # them (as in mmengine); the files they replace are deleted after the save
        retired = []
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids
                                            and self.keep_ckpt_ids[-1] == step):
            # (_save_checkpoint and _save_best_checkpoint may both save at one step)
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                retired.append(self.keep_ckpt_ids.popleft())
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))

        filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        runner.save_checkpoint(
            self.out_dir,
            filename,
            self.file_client_args,
            save_optimizer=self.save_optimizer,
            save_param_scheduler=self.save_param_scheduler,
            meta=meta,
            by_epoch=self.by_epoch,
            backend_args=self.backend_args,
            **self.args)
        if not is_main_process():
            return
        with atomic_write(osp.join(runner.work_dir, 'last_checkpoint'), 'w') as f:
            f.write(self.last_ckpt)
        if isinstance(self.file_backend, LocalBackend):  # only this process writes it
            remove_stale_temporaries(self.last_ckpt)
        for old in retired:
            path = self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(old))
            if self.file_backend.isfile(path):
                self.file_backend.remove(path)
            elif self.file_backend.isdir(path):  # checkpoints saved by deepspeed
                self.file_backend.rmtree(path)
