"""Images leave the workers as uint8 and are normalised on the device (mim/data/device.py): the
result is bit-identical to torchvision's ToTensor + Normalize, and every method's transform ships uint8."""
import numpy as np
import torch
from PIL import Image
from torchvision.transforms import functional as TF

from mim.data.device import is_image, normalize, to_device
from mim.data.images import IMAGENET_MEAN, IMAGENET_STD
from mim.data.loaders import seed_everything

CPU = torch.device("cpu")


def pil(seed: int, size: tuple[int, int] = (53, 41)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def float_path(img: Image.Image) -> torch.Tensor:
    return TF.normalize(TF.to_tensor(img), IMAGENET_MEAN, IMAGENET_STD)


def test_device_normalisation_is_bit_identical_to_totensor_normalize():
    imgs = [pil(s) for s in range(4)]
    batch = torch.stack([TF.pil_to_tensor(i) for i in imgs])  # (4, 3, 41, 53) uint8, as a loader collates it
    got = to_device(batch, CPU)
    assert got.dtype == torch.float32 and torch.equal(got, torch.stack([float_path(i) for i in imgs]))
    assert torch.equal(normalize(TF.pil_to_tensor(imgs[0])), float_path(imgs[0]))  # one image (3, H, W) too


def test_to_device_moves_everything_else_as_it_is():
    img = TF.pil_to_tensor(pil(0))[None]
    labels, mask, tok = torch.tensor([3]), torch.zeros(1, 16, dtype=torch.bool), torch.rand(1, 3, 8, 8)
    seg = torch.randint(0, 150, (1, 41, 53), dtype=torch.uint8)  # a label map: no channel dim of 3
    out = to_device({"x": [img, img], "y": (labels, mask, tok, seg), "n": 2}, CPU)
    assert all(x.dtype == torch.float32 for x in out["x"]) and out["n"] == 2
    y = out["y"]
    assert isinstance(y, tuple) and y[0] is labels and y[1] is mask and y[2] is tok and y[3] is seg
    assert not is_image(seg) and not is_image(tok) and is_image(img)


def test_every_training_and_eval_transform_ships_uint8_images():
    from mim.data.transforms import eval_transform, pretrain_transform
    from mim.engine import OptimConfig
    from mim.eval.finetune import FinetuneConfig, finetune_transforms
    from mim.eval.probe import linprobe_transform
    from mim.methods.beit import BEiTTransform, ModelConfig
    from mim.methods.beit import Config as BeitConfig
    from mim.teacher.dino import DataConfig, MultiCropAugmentation
    from mim.vit import ViTConfig

    img = pil(1, (80, 70))
    ft_train, ft_val = finetune_transforms(32, FinetuneConfig(optim=OptimConfig(epochs=1, batch_size=2, base_lr=1.0)))
    views = [pretrain_transform(32, (0.2, 1.0))(img), eval_transform(32)(img), linprobe_transform(32)(img), ft_train(img),
             ft_val(img), *MultiCropAugmentation(DataConfig(global_size=32, local_size=16, n_local=2))(img)]
    assert all(is_image(v) for v in views), [(v.dtype, v.shape) for v in views]
    beit = BeitConfig(model=ModelConfig(), optim=OptimConfig(epochs=1, batch_size=2, base_lr=1.0))
    view, tok, _ = BEiTTransform(beit, ViTConfig(img_size=32, patch_size=8), 16)(img)
    assert is_image(view) and tok.dtype == torch.float32  # the tokenizer's view keeps its own [0, 1] scaling


def test_pretrain_transform_then_device_equals_the_float_transform():
    """The MAE crop: same seed, uint8 + normalize == the same crop through ToTensor + Normalize."""
    from torchvision import transforms as T

    from mim.data.transforms import pretrain_transform

    tf = pretrain_transform(32, (0.2, 1.0))
    reference = T.Compose([*tf.transforms[:-1], T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    for s in range(3):
        img = pil(s, (64, 48))
        seed_everything(s)
        a = normalize(tf(img))
        seed_everything(s)
        assert torch.equal(a, reference(img))


def test_finetune_random_erasing_runs_on_the_normalised_batch_and_follows_the_seed():
    from mim.engine import OptimConfig
    from mim.eval.finetune import FinetuneConfig, random_erasing

    cfg = FinetuneConfig(optim=OptimConfig(epochs=1, batch_size=2, base_lr=1.0), reprob=1.0)
    erase = random_erasing(cfg, CPU)
    x = to_device(torch.stack([TF.pil_to_tensor(pil(s, (32, 32))) for s in range(4)]), CPU)
    seed_everything(7)
    a = erase(x.clone())
    seed_everything(7)
    assert torch.equal(a, erase(x.clone()))  # the engine seeds each micro-step: resume replays it
    assert all(not torch.equal(a[i], x[i]) for i in range(4))  # probability 1: every image has a box of noise
    assert random_erasing(FinetuneConfig(optim=cfg.optim, reprob=0.0), CPU) is None
