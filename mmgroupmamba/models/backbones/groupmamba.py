"""GroupMamba backbone (Shaker et al., "GroupMamba: Parameter-Efficient and Accurate Group
Visual State Space Model"), computing the same function as the released checkpoints."""
from copy import deepcopy
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
from mmengine.model import BaseModule
from mmengine.model.weight_init import trunc_normal_
from mmengine.registry import MODELS
from torch.nn.modules.batchnorm import _BatchNorm

from mmgroupmamba.execution import ExecutionPolicy, share_execution
from mmgroupmamba.runtime import execute
from ..layers import ConvStem, Downsample, GroupMambaBlock, GroupMambaStage, LayerNorm, VSSS


@MODELS.register_module()
class GroupMamba(BaseModule):
    """GroupMamba backbone with multi-scale NCHW outputs.

    Args:
        arch (str | dict): ``'tiny'``, ``'small'``, ``'base'`` (or ``'t'``, ``'s'``,
            ``'b'``), ``'demo'`` (a narrow test preset), or a dict with
            ``stem_channels``, ``embed_dims``, ``depths`` and ``mlp_ratios`` (four
            entries each, widths divisible by 4).
        in_channels (int): input image channels.
        out_indices (Sequence[int]): stages whose outputs are returned (0-3). Stages
            after the last of them are not run and their parameters do not train (they
            stay in the model, so checkpoints load and save them unchanged).
        final_norm (bool): add a LayerNorm on the stage-4 output. Stages 1-3 always end
            with the released stage norms, which are both their output norm and the input
            of the next stage. Classifiers use ``False`` (the class-token head applies the
            released stage-4 norm after its class block).
        frozen_stages (int): freeze the stem and stages ``0..frozen_stages`` (with their
            embeddings and norms); -1 freezes nothing.
        drop_path_rate (float): stochastic depth, growing linearly over all blocks. The
            released models were trained with 0.05.
        norm_eval (bool): keep the stem's BatchNorms in eval mode while training
            (sensible for the small per-GPU batches of detection and segmentation).
        d_state (int): SSM state size (1 in the released models).
        execution (dict, optional): how the backbone runs, none of which changes what
            it computes (:class:`~mmgroupmamba.execution.ExecutionPolicy`, one object
            shared by every layer): kernels and scan backend, checkpointing, and the
            runtime that launches the forward (:mod:`mmgroupmamba.runtime`).
        with_cp (bool, optional): ``execution.with_cp``, under the name every OpenMMLab
            backbone uses.
        init_cfg (dict, optional): ``dict(type='Pretrained', checkpoint=..., prefix=...)``
            loads our checkpoints and the released ones (converted on the fly).
    """

    arch_zoo = {
        **dict.fromkeys(['t', 'tiny'], {
            'stem_channels': 32,
            'embed_dims': [64, 128, 348, 448],
            'depths': [3, 4, 9, 3],
            'mlp_ratios': [8, 8, 4, 4],
        }),
        **dict.fromkeys(['s', 'small'], {
            'stem_channels': 64,
            'embed_dims': [64, 128, 348, 512],
            'depths': [3, 4, 16, 3],
            'mlp_ratios': [8, 8, 4, 4],
        }),
        **dict.fromkeys(['b', 'base'], {
            'stem_channels': 64,
            'embed_dims': [96, 192, 424, 512],
            'depths': [3, 6, 21, 3],
            'mlp_ratios': [8, 8, 4, 4],
        }),
        # the released block structure at a width that trains in minutes on a CPU (the
        # demo configs, tests and the Triton-interpreter checks); no released weights
        'demo': {
            'stem_channels': 16,
            'embed_dims': [32, 64, 96, 128],
            'depths': [1, 1, 2, 1],
            'mlp_ratios': [2, 2, 2, 2],
        },
    }
    num_stages = 4

    def __init__(self,
                 arch: Union[str, dict] = 'tiny',
                 in_channels: int = 3,
                 out_indices: Sequence[int] = (0, 1, 2, 3),
                 final_norm: bool = True,
                 frozen_stages: int = -1,
                 drop_path_rate: float = 0.05,
                 norm_eval: bool = False,
                 d_state: int = 1,
                 execution: Optional[dict] = None,
                 with_cp: Optional[bool] = None,
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.arch_settings = self._parse_arch(arch)
        embed_dims = self.arch_settings['embed_dims']
        depths = self.arch_settings['depths']
        mlp_ratios = self.arch_settings['mlp_ratios']
        self.embed_dims = embed_dims
        self.in_channels = in_channels

        if isinstance(out_indices, int):
            out_indices = [out_indices]
        out_indices = [i + self.num_stages if i < 0 else i for i in out_indices]
        for i in out_indices:
            if not 0 <= i < self.num_stages:
                raise ValueError(f'out_indices {i} is out of range(0, {self.num_stages}).')
        if not out_indices:
            raise ValueError('out_indices is empty: name at least one stage (0-3).')
        self.out_indices = tuple(out_indices)
        self.final_norm = final_norm
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval

        self.patch_embeds = nn.ModuleList([
            ConvStem(in_channels, self.arch_settings['stem_channels'], embed_dims[0])])
        for i in range(1, self.num_stages):
            self.patch_embeds.append(Downsample(embed_dims[i - 1], embed_dims[i]))

        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.stages = nn.ModuleList()
        for i, depth in enumerate(depths):
            offset = sum(depths[:i])
            self.stages.append(GroupMambaStage(*[
                GroupMambaBlock(embed_dims[i], mlp_ratios[i], drop_path=dpr[offset + j],
                                d_state=d_state) for j in range(depth)]))

        # Stages 1-3 end in a norm that is part of the released network; stage 4 gets one
        # only as an output norm for dense prediction.
        for i in range(self.num_stages - 1):
            self.add_module(f'norm{i}', LayerNorm(embed_dims[i], eps=1e-6))
        if final_norm:
            self.add_module(f'norm{self.num_stages - 1}',
                            LayerNorm(embed_dims[-1], eps=1e-6))
        self._freeze_stages()
        self.execution = share_execution(self, _execution_policy(execution, with_cp))

    def _parse_arch(self, arch):
        if isinstance(arch, str):
            key = arch.lower()
            if key not in self.arch_zoo:
                raise KeyError(f'Unknown GroupMamba arch {arch!r}; choose one of '
                               f'{sorted(set(self.arch_zoo))} or pass a dict.')
            return deepcopy(self.arch_zoo[key])
        if not isinstance(arch, dict):
            raise TypeError(f'arch must be a str or a dict, got {type(arch).__name__}.')
        required = {'stem_channels', 'embed_dims', 'depths', 'mlp_ratios'}
        if not required <= set(arch):
            raise KeyError(f'A custom arch needs the keys {sorted(required)}; '
                           f'missing {sorted(required - set(arch))}.')
        arch = {k: deepcopy(arch[k]) for k in required}
        for key in ('embed_dims', 'depths', 'mlp_ratios'):
            if len(arch[key]) != self.num_stages:
                raise ValueError(f'arch[{key!r}] needs {self.num_stages} entries, '
                                 f'got {arch[key]}.')
        bad = [d for d in arch['embed_dims'] if d % 4]
        if bad:
            raise ValueError(f'GroupMamba splits every stage into 4 channel groups, so '
                             f'embed_dims must be divisible by 4; got {arch["embed_dims"]}.')
        return arch

    # ------------------------------------------------------------------ initialisation
    def init_weights(self):
        if self.init_cfg is not None and self.init_cfg.get('type') == 'Pretrained':
            from mmgroupmamba.utils import load_backbone_weights
            load_backbone_weights(self, self.init_cfg['checkpoint'],
                                  prefix=self.init_cfg.get('prefix'))
            self._is_init = True
            return
        self.apply(self._init_module)
        for m in self.modules():
            if isinstance(m, VSSS):
                m.reset_ssm_parameters()
        super().init_weights()

    @staticmethod
    def _init_module(m):
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    # ---------------------------------------------------------------------- forward
    def forward(self, x):
        """The multi-scale NCHW outputs of ``x`` (B, C, H, W), run as
        ``self.execution`` says (:func:`mmgroupmamba.runtime.execute`)."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f'GroupMamba expects (B, {self.in_channels}, H, W) images, '
                             f'got a tensor of shape {tuple(x.shape)}.')
        if not x.is_floating_point():
            raise TypeError(f'GroupMamba expects floating-point images (float32; float16 '
                            f'or bfloat16 also work), got {x.dtype}: convert and '
                            'normalise them first (x.float(), or a data preprocessor).')
        return execute(self, self.forward_features, x)

    def forward_features(self, x):
        """The computation itself, eagerly."""
        outs = []
        for i in range(max(self.out_indices) + 1):  # later stages would feed nothing
            # The stem takes the NCHW image; later embeddings take channels-last maps; the
            # stage applies its norm (if any) fused with its last residual add.
            x = self.stages[i](self.patch_embeds[i](x), getattr(self, f'norm{i}', None))
            if i in self.out_indices:
                outs.append(x.permute(0, 3, 1, 2).contiguous())
        return tuple(outs)

    def untrainable_outputs(self) -> list:
        """The output stages (of ``out_indices``) with no trainable parameter before
        them (frozen stages): their outputs carry no gradient."""
        first_trainable = next((i for i in range(self.num_stages)
                                if any(p.requires_grad for m in self._stage_modules(i)
                                       for p in m.parameters())), self.num_stages)
        return [i for i in self.out_indices if i < first_trainable]

    # ------------------------------------------------------------------- train/freeze
    def _stage_modules(self, i):
        """Stage ``i``'s embedding, blocks and norm (if any)."""
        norm = getattr(self, f'norm{i}', None)
        return [self.patch_embeds[i], self.stages[i]] + ([norm] if norm is not None else [])

    def _stages_after_outputs(self):
        """Stages after the last output stage: not run, so their parameters (kept, so
        that checkpoints keep them) get no gradient. They do not train, and DDP, which
        waits for a gradient of every parameter that requires one, needs no
        ``find_unused_parameters`` for them."""
        return range(max(self.out_indices) + 1, self.num_stages)

    def _freeze_stages(self):
        for i in self._stages_after_outputs():
            for m in self._stage_modules(i):
                for p in m.parameters():
                    p.requires_grad = False
        if self.frozen_stages < 0:
            return
        for i in range(min(self.frozen_stages + 1, self.num_stages)):
            for m in self._stage_modules(i):
                m.eval()
                for p in m.parameters():
                    p.requires_grad = False

    def train(self, mode=True):
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.patch_embeds[0].modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self


def _execution_policy(execution: Optional[dict], with_cp: Optional[bool]) -> ExecutionPolicy:
    """``execution`` with ``with_cp`` if that was given (both ways, they must agree)."""
    cfg = dict(execution or {})
    if with_cp is not None:
        if cfg.get('with_cp', with_cp) != with_cp:
            raise ValueError(f'GroupMamba got with_cp={with_cp!r} and execution.with_cp='
                             f'{cfg["with_cp"]!r}; set it once.')
        cfg['with_cp'] = with_cp
    return ExecutionPolicy.from_config(cfg)
