# ruff: noqa: E501  (STATED is a table: one key, value and source per line reads best unwrapped)
"""Parity report: every recipe hyperparameter of the paper profile beside the value its source states.

`STATED` records, for each key of params/paper.yaml, the value the paper or the official
repository states and where (paper + arXiv id, or the repository file), written down once from the
sources the profile's comments cite and kept here apart from the profile, so a value changed in the
profile shows up as a mismatch instead of silently becoming "the recipe".  `None`: no source states
the value (our reading of the method, a default of ours, or not found in the released files): the
report lists those too, so what is unsourced is visible.  "DINO RN-50 args.txt" is the released
dl.fbaipublicfiles.com/dino/dino_resnet50_pretrain/args.txt as quoted by scripts that copy it
(params/paper.yaml's dino section says why).  Keys in `OPERATIONAL` (paths, seeds,
logging and evaluation batch sizes) change no result and are not recipe values.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Stated:
    value: Any
    source: str


STATED: dict[str, Stated | None] = {
    'dino.model.arch': Stated('resnet50', 'DINO RN-50 args.txt arch resnet50; Img2Vec paper (arXiv 2304.12535): DINO RN-50 teacher'),
    'dino.model.head.out_dim': Stated(60000, "DINO RN-50 args.txt out_dim 60000 (DINO paper (arXiv 2104.14294)'s K = 65536 is the ViT default)"),
    'dino.model.head.hidden_dim': Stated(2048, 'facebookresearch/dino vision_transformer.py DINOHead default (no main_dino.py flag); DINO paper (arXiv 2104.14294)'),
    'dino.model.head.bottleneck_dim': Stated(256, 'facebookresearch/dino DINOHead default; DINO paper (arXiv 2104.14294)'),
    'dino.model.head.n_layers': Stated(3, 'facebookresearch/dino DINOHead default; DINO paper (arXiv 2104.14294)'),
    'dino.model.head.use_bn': Stated(True, 'DINO RN-50 args.txt use_bn_in_head True (BatchNorm1d after each hidden Linear, as DINOHead)'),
    'dino.model.head.norm_last_layer': Stated(True, 'DINO RN-50 args.txt norm_last_layer True'),
    'dino.model.student_temp': Stated(0.1, 'facebookresearch/dino main_dino.py DINOLoss default (no flag); DINO paper (arXiv 2104.14294) tau_s 0.1'),
    'dino.model.teacher_temp': Stated(0.07, 'DINO RN-50 args.txt teacher_temp 0.07'),
    'dino.model.warmup_teacher_temp': Stated(0.04, 'DINO RN-50 args.txt warmup_teacher_temp 0.04'),
    'dino.model.warmup_teacher_temp_epochs': Stated(50, 'DINO RN-50 args.txt warmup_teacher_temp_epochs 50'),
    'dino.model.center_momentum': Stated(0.9, 'facebookresearch/dino main_dino.py DINOLoss default (no flag); DINO paper (arXiv 2104.14294)'),
    'dino.model.momentum_teacher': Stated(0.996, "DINO RN-50 args.txt momentum_teacher 0.996 (one copy has 0.9995, main_dino.py's small-batch advice)"),
    'dino.model.freeze_last_layer_epochs': Stated(1, 'DINO RN-50 args.txt freeze_last_layer 1'),
    'dino.data.global_size': Stated(224, 'facebookresearch/dino main_dino.py DataAugmentationDINO (fixed 224, no flag)'),
    'dino.data.local_size': Stated(96, 'facebookresearch/dino main_dino.py DataAugmentationDINO (fixed 96, no flag)'),
    'dino.data.n_global': Stated(2, 'facebookresearch/dino main_dino.py (2 global crops, fixed)'),
    'dino.data.n_local': None,  # NOT FOUND in the DINO RN-50 args.txt copies (main_dino.py default 8 kept)
    'dino.data.global_scale': None,  # NOT FOUND in the DINO RN-50 args.txt copies; the README RN-50 command and papers.md DINO (RN-50 0.14-1) kept
    'dino.data.local_scale': None,  # NOT FOUND in the DINO RN-50 args.txt copies; the README RN-50 command kept
    'dino.optim.epochs': Stated(800, 'DINO RN-50 args.txt epochs 800'),
    'dino.optim.batch_size': Stated(4080, 'facebookresearch/dino issue 133: 4080 on 80 GPUs (batch_size_per_gpu=51, quoted there); SyncBatchNorm over all of it as DINO; run.device_batch accumulates to fit fewer GPUs (BN then sees less)'),
    'dino.optim.base_lr': Stated(0.3, "DINO RN-50 args.txt lr 0.3 (x batch/256, main_dino.py's linear scaling: 4.78 at 4080)"),
    'dino.optim.optimizer': Stated('lars', 'DINO RN-50 args.txt optimizer lars (dino utils.py LARS = mim/lars.py)'),
    'dino.optim.momentum': Stated(0.9, 'facebookresearch/dino utils.py LARS default (no flag)'),
    'dino.optim.weight_decay': Stated(1e-06, 'DINO RN-50 args.txt weight_decay 1e-6'),
    'dino.optim.weight_decay_end': Stated(1e-06, 'DINO RN-50 args.txt weight_decay_end 1e-6'),
    'dino.optim.warmup_epochs': Stated(10, 'DINO RN-50 args.txt warmup_epochs 10'),
    'dino.optim.min_lr': Stated(0.0048, "DINO RN-50 args.txt min_lr 0.0048 (the cosine's end, not scaled, as in main_dino.py)"),
    'dino.optim.clip_grad': Stated(None, 'DINO RN-50 args.txt clip_grad 0 (off)'),
    'dino.optim.clip_mode': Stated('per_param', "DINO's clipping when on (main_dino.py utils.clip_gradients: each parameter's norm)"),
    'dino.knn.k': Stated(20, 'facebookresearch/dino eval_knn.py (weighted k-NN, cosine, k=20, T=0.07)'),
    'dino.knn.temperature': Stated(0.07, 'facebookresearch/dino eval_knn.py (weighted k-NN, cosine, k=20, T=0.07)'),
    'tokenizer.mode': Stated('dalle', 'BEiT paper (arXiv 2106.08254): "DALL-E discrete VAE"'),
    'tokenizer.model.image_size': Stated(112, 'BEiT paper (arXiv 2106.08254): 112x112 downsampled view (both modes)'),
    'tokenizer.model.vocab_size': Stated(8192, 'BEiT paper (arXiv 2106.08254): 8192 visual words'),
    'tokenizer.model.downsample': Stated(8, 'BEiT paper (arXiv 2106.08254): one token per 16x16 patch at 224 = 8x8 at 112'),
    'tokenizer.model.code_dim': None,  # no source
    'tokenizer.model.hidden': None,  # no source
    'tokenizer.model.res_blocks': None,  # no source
    'tokenizer.model.ema_decay': None,  # no source
    'tokenizer.model.commitment': None,  # no source
    'tokenizer.model.dead_threshold': None,  # no source
    'tokenizer.data.crop_scale': None,  # no source
    'tokenizer.optim.epochs': None,  # no source
    'tokenizer.optim.batch_size': None,  # no source
    'tokenizer.optim.base_lr': None,  # no source
    'tokenizer.optim.warmup_epochs': None,  # no source
    'tokenizer.optim.weight_decay': None,  # no source
    'tokenizer.optim.betas': None,  # no source
    'encoder.img_size': Stated(224, 'ViT-B/16 (Dosovitskiy et al., arXiv 2010.11929, Table 1): the ViT-B rows of MAE, BEiT and Img2Vec'),
    'encoder.patch_size': Stated(16, 'ViT-B/16 (Dosovitskiy et al., arXiv 2010.11929, Table 1): the ViT-B rows of MAE, BEiT and Img2Vec'),
    'encoder.embed_dim': Stated(768, 'ViT-B/16 (Dosovitskiy et al., arXiv 2010.11929, Table 1): the ViT-B rows of MAE, BEiT and Img2Vec'),
    'encoder.depth': Stated(12, 'ViT-B/16 (Dosovitskiy et al., arXiv 2010.11929, Table 1): the ViT-B rows of MAE, BEiT and Img2Vec'),
    'encoder.num_heads': Stated(12, 'ViT-B/16 (Dosovitskiy et al., arXiv 2010.11929, Table 1): the ViT-B rows of MAE, BEiT and Img2Vec'),
    'encoder.mlp_ratio': Stated(4.0, 'ViT-B/16 (Dosovitskiy et al., arXiv 2010.11929, Table 1): the ViT-B rows of MAE, BEiT and Img2Vec'),
    'mae.model.mask_ratio': Stated(0.75, 'MAE paper (arXiv 2111.06377): "keep the first 25% (mask ratio 0.75)"'),
    'mae.model.decoder_dim': Stated(512, 'MAE paper (arXiv 2111.06377): "8 blocks x 512 wide (paper default)"'),
    'mae.model.decoder_depth': Stated(8, 'MAE paper (arXiv 2111.06377): same line'),
    'mae.model.decoder_heads': Stated(16, 'facebookresearch/mae mae_vit_base_patch16 (decoder_num_heads=16); not in the papers'),
    'mae.model.norm_pix': Stated(True, 'MAE paper (arXiv 2111.06377): "norm_pix_loss"'),
    'mae.data.crop_scale': Stated([0.2, 1.0], 'MAE paper (arXiv 2111.06377): "RandomResizedCrop(0.2, 1) + flip only"'),
    'mae.optim.epochs': Stated(800, 'MAE paper (arXiv 2111.06377): "800 or 1600 epochs" (1600 for the best numbers)'),
    'mae.optim.batch_size': Stated(4096, 'MAE paper (arXiv 2111.06377): "batch 4096"'),
    'mae.optim.base_lr': Stated(0.00015, 'MAE paper (arXiv 2111.06377): "base lr 1.5e-4 x batch/256"'),
    'mae.optim.warmup_epochs': Stated(40, 'MAE paper (arXiv 2111.06377): "40 warm-up epochs, cosine"'),
    'mae.optim.weight_decay': Stated(0.05, 'MAE paper (arXiv 2111.06377): "wd 0.05"'),
    'mae.optim.betas': Stated([0.9, 0.95], 'MAE paper (arXiv 2111.06377): "AdamW beta=(0.9, 0.95)"'),
    'mae.optim.min_lr': Stated(0.0, 'facebookresearch/mae default (cosine to 0)'),
    'beit.model.mask_ratio': Stated(0.383, 'BEiT paper (arXiv 2106.08254): ~40%, officially 75 of 196 patches (round(0.383 x 196) = 75)'),
    'beit.model.min_num_patches': Stated(16, 'BEiT paper (arXiv 2106.08254): blocks of s >= 16 patches'),
    'beit.model.min_aspect': Stated(0.3, 'BEiT paper (arXiv 2106.08254): aspect ratio in [0.3, 1/0.3]'),
    'beit.model.layer_scale': Stated(0.1, 'BEiT paper (arXiv 2106.08254) appendix: layer-scale init 0.1'),
    'beit.model.drop_path': Stated(0.1, 'BEiT paper (arXiv 2106.08254) appendix: stochastic depth 0.1'),
    'beit.model.init_std': Stated(0.02, 'unilm/beit: truncated-normal init std'),
    'beit.model.rel_pos_bias': Stated('shared', 'unilm/beit run_beit_pretraining.py: --rel_pos_bias default on -> modeling_pretrain.py use_shared_rel_pos_bias'),
    'beit.model.abs_pos': Stated(False, "unilm/beit run_beit_pretraining.py: --abs_pos_emb default off (README's ViT-B commands keep both defaults)"),
    'beit.data.crop_scale': Stated([0.08, 1.0], 'unilm/beit: RandomResizedCrop default scale'),
    'beit.data.color_jitter': Stated(0.4, 'BEiT paper (arXiv 2106.08254) appendix: color jitter 0.4'),
    'beit.optim.epochs': Stated(800, 'BEiT paper (arXiv 2106.08254): ViT-B pretrained 800 epochs'),
    'beit.optim.batch_size': Stated(2048, 'BEiT paper (arXiv 2106.08254) appendix: batch 2048'),
    'beit.optim.base_lr': Stated(0.0001875, 'BEiT paper (arXiv 2106.08254) appendix: peak lr 1.5e-3 at batch 2048 (lr = base_lr * batch / 256)'),
    'beit.optim.min_lr': Stated(1e-05, 'BEiT paper (arXiv 2106.08254) appendix: cosine to 1e-5'),
    'beit.optim.warmup_epochs': Stated(10, 'BEiT paper (arXiv 2106.08254) appendix: 10 warm-up epochs'),
    'beit.optim.weight_decay': Stated(0.05, 'BEiT paper (arXiv 2106.08254) appendix: weight decay 0.05'),
    'beit.optim.betas': Stated([0.9, 0.999], 'BEiT paper (arXiv 2106.08254) appendix: AdamW beta 0.9, 0.999'),
    'beit.optim.clip_grad': Stated(3.0, 'BEiT paper (arXiv 2106.08254) appendix: gradient clipping 3.0'),
    'img2vec.model.mask_ratio': Stated(0.6, 'Img2Vec paper (arXiv 2304.12535): 60% masked'),
    'img2vec.model.block_size': Stated(0, '0 = teacher stride / patch: 32 px = 2x2 patches for DINO RN-50 (Img2Vec paper (arXiv 2304.12535)); 16 px for ViT teachers (review 3-2)'),
    'img2vec.model.teacher_img_size': Stated(0, "0 = 224 for a CNN teacher (7x7 tokens, Img2Vec paper (arXiv 2304.12535)), a ViT teacher's own size"),
    'img2vec.model.decoder_dim': None,  # not in the sources: MAE's decoder width (papers.md MAE)
    'img2vec.model.decoder_depth': Stated(2, 'Img2Vec paper (arXiv 2304.12535): decoder depth 2 for ViT-B (4 for ViT-L)'),
    'img2vec.model.decoder_heads': None,  # not in the sources: MAE's
    'img2vec.model.head_hidden': None,  # not in the sources: projection MLP hidden = teacher width (2048 for RN-50)
    'img2vec.model.merge': None,  # our reading: a block's 2x2 decoder outputs averaged, then the head (papers.md Img2Vec); per_patch (each patch regresses the block's token) is the other reading, con
    'img2vec.model.multi_block': Stated(True, 'Img2Vec paper (arXiv 2304.12535): multi-block feature learning (mean of all encoder blocks)'),
    'img2vec.model.beta': Stated(2.0, 'Img2Vec paper (arXiv 2304.12535): smooth-L1 beta = 2'),
    'img2vec.model.global_weight': Stated(0.5, 'Img2Vec paper (arXiv 2304.12535): lambda = 0.5'),
    'img2vec.model.global_source': None,  # our reading: GAP of the encoder output over visible patches (review: "V")
    'img2vec.model.target_norm': None,  # the sources name no target normalisation
    'img2vec.data.crop_scale': None,  # not in the sources: MAE's RandomResizedCrop(0.2, 1) + flip (papers.md MAE)
    'img2vec.optim.epochs': None,  # papers.md MAE: 800 (or 1600); Img2Vec's epoch count not verified
    'img2vec.optim.batch_size': Stated(4096, 'MAE paper (arXiv 2111.06377)'),
    'img2vec.optim.base_lr': Stated(0.00015, 'MAE paper (arXiv 2111.06377): 1.5e-4 x batch / 256'),
    'img2vec.optim.warmup_epochs': Stated(40, 'MAE paper (arXiv 2111.06377)'),
    'img2vec.optim.weight_decay': Stated(0.05, 'MAE paper (arXiv 2111.06377)'),
    'img2vec.optim.betas': Stated([0.9, 0.95], 'MAE paper (arXiv 2111.06377)'),
    'diversity.img_size': Stated(224, 'Img2Vec paper (arXiv 2304.12535): 224 px'),
    'diversity.split': None,  # Img2Vec samples ImageNet training images for its token-diversity study (per the fidelity review, issue 17); papers.md does not state the split
    'finetune.layer_decay': Stated(0.65, 'MAE paper (arXiv 2111.06377): "layer-wise lr decay 0.65 (repo; paper Table 9 says 0.75)"'),
    'finetune.drop_path': Stated(0.1, 'MAE paper (arXiv 2111.06377): "drop path 0.1"'),
    'finetune.mixup': Stated(0.8, 'MAE paper (arXiv 2111.06377): "mixup 0.8"'),
    'finetune.cutmix': Stated(1.0, 'MAE paper (arXiv 2111.06377): "cutmix 1.0"'),
    'finetune.label_smoothing': Stated(0.1, 'MAE paper (arXiv 2111.06377): "label smoothing 0.1"'),
    'finetune.auto_augment': Stated('rand-m9-mstd0.5-inc1', 'MAE paper (arXiv 2111.06377): "RandAug(9, 0.5)"'),
    'finetune.reprob': Stated(0.25, 'facebookresearch/mae FINETUNE.md (--reprob 0.25); not in the papers'),
    'finetune.crop_scale': Stated([0.08, 1.0], 'facebookresearch/mae util/datasets.py (timm create_transform default RandomResizedCrop); not in the papers'),
    'finetune.global_pool': Stated(True, 'MAE paper (arXiv 2111.06377): "global average pooling instead of cls token"'),
    'finetune.optim.epochs': Stated(100, 'MAE paper (arXiv 2111.06377): "Fine-tune ViT-B: 100 epochs"'),
    'finetune.optim.batch_size': Stated(1024, 'facebookresearch/mae FINETUNE.md (32 x 4 nodes x 8 GPUs); not in the papers'),
    'finetune.optim.base_lr': Stated(0.0005, 'facebookresearch/mae FINETUNE.md (--blr 5e-4) for ViT-B; not in the papers (MAE paper Table 9 gives 1e-3 with decay 0.75)'),
    'finetune.optim.warmup_epochs': Stated(5, 'facebookresearch/mae FINETUNE.md (--warmup_epochs 5); not in the papers'),
    'finetune.optim.weight_decay': Stated(0.05, 'facebookresearch/mae FINETUNE.md (--weight_decay 0.05); not in the papers'),
    'finetune.optim.betas': Stated([0.9, 0.999], 'facebookresearch/mae main_finetune.py (AdamW defaults); not in the papers'),
    'finetune.optim.min_lr': Stated(1e-06, 'facebookresearch/mae main_finetune.py default; not in the papers'),
    'finetune_beit.layer_decay': Stated(0.65, 'unilm beit/get_started_for_image_classification.md: --layer_decay 0.65'),
    'finetune_beit.drop_path': Stated(0.1, 'unilm beit/get_started_for_image_classification.md: --drop_path 0.1'),
    'finetune_beit.mixup': Stated(0.8, 'unilm beit/get_started_for_image_classification.md: --mixup 0.8'),
    'finetune_beit.cutmix': Stated(1.0, 'unilm beit/get_started_for_image_classification.md: --cutmix 1.0'),
    'finetune_beit.label_smoothing': Stated(0.1, 'unilm beit/run_class_finetuning.py --smoothing default 0.1'),
    'finetune_beit.auto_augment': Stated('rand-m9-mstd0.5-inc1', 'unilm beit/run_class_finetuning.py --aa default'),
    'finetune_beit.reprob': Stated(0.25, 'unilm beit/run_class_finetuning.py --reprob default 0.25 (--remode pixel, --recount 1)'),
    'finetune_beit.crop_scale': Stated([0.08, 1.0], "unilm beit/datasets.py build_transform: timm create_transform's default RandomResizedCrop scale"),
    'finetune_beit.global_pool': Stated(True, 'unilm beit/run_class_finetuning.py --use_mean_pooling default: mean of patch tokens + fc_norm'),
    'finetune_beit.optim.epochs': Stated(100, 'unilm beit/get_started_for_image_classification.md: --epochs 100'),
    'finetune_beit.optim.batch_size': Stated(1024, 'unilm beit/get_started_for_image_classification.md: 8 GPUs x --batch_size 128 x --update_freq 1'),
    'finetune_beit.optim.base_lr': Stated(0.001, 'unilm beit/get_started_for_image_classification.md: --lr 4e-3 at batch 1024 (run_class_finetuning.py does not scale it) = 1e-3 x 1024 / 256'),
    'finetune_beit.optim.warmup_epochs': Stated(20, 'unilm beit/get_started_for_image_classification.md: --warmup_epochs 20 (linear from 0: utils.cosine_scheduler)'),
    'finetune_beit.optim.weight_decay': Stated(0.05, 'unilm beit/get_started_for_image_classification.md: --weight_decay 0.05 (constant: --weight_decay_end default = weight_decay)'),
    'finetune_beit.optim.betas': Stated([0.9, 0.999], "unilm beit/run_class_finetuning.py --opt_betas default None: AdamW's (0.9, 0.999), eps 1e-8"),
    'finetune_beit.optim.min_lr': Stated(1e-06, 'unilm beit/run_class_finetuning.py --min_lr default 1e-6'),
    'finetune_beit.optim.clip_grad': Stated(None, 'unilm beit/run_class_finetuning.py --clip_grad default None'),
    'probe.linear.protocol': Stated('augmented', 'facebookresearch/mae main_linprobe.py: RandomResizedCrop + flip views through the frozen encoder every epoch'),
    'probe.linear.epochs': Stated(90, 'facebookresearch/mae FINETUNE.md, Linear Probing (ViT-B): --epochs 90'),
    'probe.linear.batch_size': Stated(16384, 'facebookresearch/mae FINETUNE.md, Linear Probing: 512 x 4 nodes x 8 GPUs'),
    'probe.linear.base_lr': Stated(0.1, 'facebookresearch/mae FINETUNE.md, Linear Probing: --blr 0.1'),
    'probe.linear.warmup_epochs': Stated(10, 'facebookresearch/mae main_linprobe.py: --warmup_epochs default 10 (the command leaves it)'),
    'probe.linear.weight_decay': Stated(0.0, 'facebookresearch/mae FINETUNE.md, Linear Probing: --weight_decay 0.0'),
    'probe.linear.momentum': Stated(0.9, 'facebookresearch/mae util/lars.py default'),
    'probe.linear.optimizer': Stated('lars', 'facebookresearch/mae main_linprobe.py (LARS)'),
    'probe.knn.k': Stated(20, 'facebookresearch/dino eval_knn.py --nb_knn 20; not in the papers'),
    'probe.knn.temperature': Stated(0.07, 'facebookresearch/dino eval_knn.py --temperature 0.07; not in the papers'),
    'detect.img_size': Stated(1024, 'detectron2 projects/ViTDet/configs/COCO/mask_rcnn_vitdet_b_100ep.py (and configs/common/models/mask_rcnn_vitdet.py): LSJ crop 1024x1024, test resize to 1024 (ViTDet)'),
    'detect.lsj_scale': Stated([0.1, 2.0], 'detectron2 projects/ViTDet/configs/COCO/mask_rcnn_vitdet_b_100ep.py (and configs/common/models/mask_rcnn_vitdet.py): large-scale jitter (ViTDet)'),
    'detect.window_size': Stated(14, "window attention (the MAE paper's downstream protocols (arXiv 2111.06377); ViTDet)"),
    'detect.global_blocks': Stated([2, 5, 8, 11], 'detectron2 projects/ViTDet/configs/COCO/mask_rcnn_vitdet_b_100ep.py (and configs/common/models/mask_rcnn_vitdet.py): global attention blocks of ViT-B (ViTDet)'),
    'detect.use_rel_pos': Stated(True, "relative position (the MAE paper's downstream protocols (arXiv 2111.06377))"),
    'detect.drop_path': Stated(0.1, 'detectron2 projects/ViTDet/configs/COCO/mask_rcnn_vitdet_b_100ep.py (and configs/common/models/mask_rcnn_vitdet.py): ViTDet ViT-B'),
    'detect.scale_factors': Stated([4.0, 2.0, 1.0, 0.5], "simple feature pyramid, strides 4..32 + p6 (the MAE paper's downstream protocols (arXiv 2111.06377))"),
    'detect.fpn_channels': Stated(256, 'detectron2 projects/ViTDet/configs/COCO/mask_rcnn_vitdet_b_100ep.py and configs/common/models/mask_rcnn_vitdet.py'),
    'detect.anchor_scale': Stated(8.0, 'detectron2 projects/ViTDet/configs/COCO/mask_rcnn_vitdet_b_100ep.py (and configs/common/models/mask_rcnn_vitdet.py): anchors 32..512 px (stock Mask R-CNN FPN)'),
    'detect.box_head_convs': Stated([256, 256, 256, 256], 'detectron2 projects/ViTDet/configs/COCO/mask_rcnn_vitdet_b_100ep.py (and configs/common/models/mask_rcnn_vitdet.py): 4conv1fc, LN (ViTDet)'),
    'detect.box_head_fcs': Stated([1024], 'detectron2 projects/ViTDet/configs/COCO/mask_rcnn_vitdet_b_100ep.py and configs/common/models/mask_rcnn_vitdet.py'),
    'detect.mask_head_dims': Stated([256, 256, 256, 256, 256], 'detectron2 projects/ViTDet/configs/COCO/mask_rcnn_vitdet_b_100ep.py (and configs/common/models/mask_rcnn_vitdet.py): 4 convs + deconv (Mask R-CNN FPN)'),
    'detect.roi_batch_per_image': Stated(512, 'detectron2 projects/ViTDet/configs/COCO/mask_rcnn_vitdet_b_100ep.py and configs/common/models/mask_rcnn_vitdet.py'),
    'detect.test_proposals': Stated(1000, 'detectron2 projects/ViTDet/configs/COCO/mask_rcnn_vitdet_b_100ep.py and configs/common/models/mask_rcnn_vitdet.py'),
    'detect.test_score_thresh': Stated(0.05, 'detectron2 projects/ViTDet/configs/COCO/mask_rcnn_vitdet_b_100ep.py (and configs/common/models/mask_rcnn_vitdet.py): (Mask R-CNN FPN)'),
    'detect.batch_size': Stated(64, 'detectron2 projects/ViTDet/configs/COCO/mask_rcnn_vitdet_b_100ep.py (and configs/common/models/mask_rcnn_vitdet.py): 100 epochs = 184375 iterations x 64 images (ViTDet)'),
    'detect.max_iter': Stated(184375, 'detectron2 projects/ViTDet/configs/COCO/mask_rcnn_vitdet_b_100ep.py and configs/common/models/mask_rcnn_vitdet.py'),
    'detect.lr': Stated(0.0001, 'detectron2 projects/ViTDet/configs/COCO/mask_rcnn_vitdet_b_100ep.py (and configs/common/models/mask_rcnn_vitdet.py): AdamW (ViTDet)'),
    'detect.betas': Stated([0.9, 0.999], 'detectron2 projects/ViTDet/configs/COCO/mask_rcnn_vitdet_b_100ep.py and configs/common/models/mask_rcnn_vitdet.py'),
    'detect.weight_decay': Stated(0.1, 'detectron2 projects/ViTDet/configs/COCO/mask_rcnn_vitdet_b_100ep.py and configs/common/models/mask_rcnn_vitdet.py'),
    'detect.layer_decay': Stated(0.7, 'detectron2 projects/ViTDet/configs/COCO/mask_rcnn_vitdet_b_100ep.py (and configs/common/models/mask_rcnn_vitdet.py): layer-wise lr decay, ViT-B (ViTDet)'),
    'detect.warmup_iters': Stated(250, 'detectron2 projects/ViTDet/configs/COCO/mask_rcnn_vitdet_b_100ep.py and configs/common/models/mask_rcnn_vitdet.py'),
    'detect.lr_steps': Stated([163889, 177546], 'detectron2 projects/ViTDet/configs/COCO/mask_rcnn_vitdet_b_100ep.py (and configs/common/models/mask_rcnn_vitdet.py): lr x0.1 at 88.9% and 96.3% (ViTDet)'),
    'segment.out_blocks': Stated([4, 6, 8, 12], "the MAE paper's downstream protocols (arXiv 2111.06377)"),
    'segment.crop_size': Stated(512, "the MAE paper's downstream protocols (arXiv 2111.06377)"),
    'segment.img_scale': Stated([2048, 512], 'mmseg ADE20K pipeline (short side 512); not in the papers'),
    'segment.ratio_range': Stated([0.5, 2.0], 'mmseg ADE20K pipeline; not in the papers'),
    'segment.iters': Stated(160000, "the MAE paper's downstream protocols (arXiv 2111.06377)"),
    'segment.batch_size': Stated(16, 'mmseg configs/mae/mae-base_upernet_8xb2-amp-160k_ade20k-512x512.py: 8 GPUs x 2 (train_dataloader batch_size=2, line 52); not in the papers'),
    'segment.lr': Stated(0.0001, 'mmseg configs/mae/mae-base_upernet_8xb2-amp-160k_ade20k-512x512.py AdamW lr (line 31); not in the papers'),
    'segment.betas': Stated([0.9, 0.999], 'mmseg configs/mae/mae-base_upernet_8xb2-amp-160k_ade20k-512x512.py (line 31); not in the papers'),
    'segment.weight_decay': Stated(0.05, 'mmseg configs/mae/mae-base_upernet_8xb2-amp-160k_ade20k-512x512.py (line 31); not in the papers'),
    'segment.layer_decay': Stated(0.65, 'MAE paper (arXiv 2111.06377) (fine-tune layer-wise lr decay 0.65, repo); mmseg configs/mae/mae-base_upernet_8xb2-amp-160k_ade20k-512x512.py layer_decay_rate 0.65 (line 32)'),
    'segment.warmup_iters': Stated(1500, 'mmseg configs/mae/mae-base_upernet_8xb2-amp-160k_ade20k-512x512.py LinearLR from 1e-6, iterations 0-1500 (line 37); not in the papers'),
    'segment.poly_power': Stated(1.0, 'mmseg configs/mae/mae-base_upernet_8xb2-amp-160k_ade20k-512x512.py PolyLR power 1.0 to eta_min 0 (lines 38-45); not in the papers'),
    'segment.drop_path': Stated(0.1, 'MAE paper (arXiv 2111.06377) (fine-tune drop path 0.1); mmseg configs/mae/mae-base_upernet_8xb2-amp-160k_ade20k-512x512.py drop_path_rate 0.1 (line 19)'),
    'segment.rel_pos_bias': Stated(True, 'mmseg configs/mae/mae-base_upernet_8xb2-amp-160k_ade20k-512x512.py backbone (mmseg/models/backbones/mae.py): a relative position bias per block, zero init; not in the papers'),
    'segment.layer_scale': Stated(1.0, 'mmseg configs/mae/mae-base_upernet_8xb2-amp-160k_ade20k-512x512.py init_values=1.0 (line 18): learnable LayerScale; not in the papers'),
    'segment.head_channels': Stated(768, 'mmseg configs/mae/mae-base_upernet_8xb2-amp-160k_ade20k-512x512.py UPerHead channels (line 23); not in the papers'),
    'segment.aux_channels': Stated(256, 'mmseg configs/mae/mae-base_upernet_8xb2-amp-160k_ade20k-512x512.py FCNHead channels (_base_/models/upernet_mae.py line 47); not in the papers'),
    'segment.aux_weight': Stated(0.4, 'mmseg configs/mae/mae-base_upernet_8xb2-amp-160k_ade20k-512x512.py FCNHead loss weight (_base_/models/upernet_mae.py line 54); not in the papers'),
    'segment.test_mode': Stated('slide', "mmseg configs/mae/mae-base_upernet_8xb2-amp-160k_ade20k-512x512.py: single scale, 512 windows; the MAE paper's downstream protocols (arXiv 2111.06377) (single-scale)"),
    'segment.slide_stride': Stated(256, 'mmseg configs/mae/mae-base_upernet_8xb2-amp-160k_ade20k-512x512.py test_cfg stride=(256, 256) with 512 crops (341 is the BEiT config\'s)'),
}

OPERATIONAL_SECTIONS = ("run.", "data.", "tables.", "launch.")  # process set-up, dataset paths, report options, launcher
OPERATIONAL: tuple[str, ...] = (
    'dino.source',
    'dino.checkpoint',
    'dino.data.limit_per_class',
    'dino.knn.train_per_class',
    'dino.knn.every',
    'tokenizer.dalle_weights',
    'diversity.batch_size',
    'diversity.limit_per_class',
    'finetune.labels_per_class',
    'finetune.eval_batch_size',
    'finetune.eval_every',
    'finetune_beit.labels_per_class',
    'finetune_beit.eval_batch_size',
    'finetune_beit.eval_every',
    'probe.batch_size',
    'detect.checkpoint_period',
    'detect.log_period',
    'segment.val_interval',
    'segment.checkpoint_interval',
    'segment.log_interval',
)

MATCH, MISMATCH, UNSOURCED, NEW = "ok", "MISMATCH", "no source", "not recorded"


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return abs(a - b) <= 1e-12 * max(abs(a), abs(b), 1.0)
    return a == b


def check(params: dict[str, Any]) -> list[tuple[str, Any, Any, str, str]]:
    """(key, profile value, stated value, status, source) for every recipe key of the flattened profile
    and every stated key it lacks."""
    rows = []
    for key in sorted(set(params) | set(STATED)):
        if key in OPERATIONAL or key.startswith(OPERATIONAL_SECTIONS) or params.get(key) == {}:  # {}: a section with no params
            continue
        value = params.get(key, "(missing)")
        if key not in STATED:
            rows.append((key, value, None, NEW, "a key this report does not know: add its stated value to mim/report/parity.py"))
            continue
        stated = STATED[key]
        if stated is None:
            rows.append((key, value, None, UNSOURCED, ""))
        else:
            rows.append((key, value, stated.value, MATCH if _same(value, stated.value) else MISMATCH, stated.source))
    return rows


def markdown(rows: list[tuple[str, Any, Any, str, str]], params_path: str) -> str:
    counts = {s: sum(r[3] == s for r in rows) for s in (MATCH, MISMATCH, UNSOURCED, NEW)}
    lines = [
        "# Parity: the paper profile against the papers and the official code",
        "",
        (f"Every recipe hyperparameter of `{params_path}` beside the value its source states (mim/report/parity.py). "
        f"{counts[MATCH]} match, **{counts[MISMATCH]} differ**, {counts[UNSOURCED]} have no stated value (our reading, "
        f"a default of ours, or not found in the released files), {counts[NEW]} are not recorded. Paths, seeds, logging "
        "and evaluation batch sizes are not recipe values and are left out."),
        "",
        "| key | profile | stated | | source |",
        "|---|---|---|---|---|",
    ]
    def cell(v: Any) -> str:
        return "" if v is None else f"`{v}`"
    for key, value, stated, status, source in sorted(rows, key=lambda r: (r[3] != MISMATCH, r[3] == UNSOURCED, r[0])):
        mark = {MATCH: "ok", MISMATCH: "**differs**", UNSOURCED: "no source", NEW: "**not recorded**"}[status]
        lines.append(f"| `{key}` | {cell(value)} | {cell(stated) if status != UNSOURCED else ''} | {mark} | {source.replace('|', '/')} |")
    return "\n".join(lines) + "\n"
