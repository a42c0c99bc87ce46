"""Every registered model: shapes for two input lengths, finite gradients, it can learn, and
the pretrained-weight loaders."""

import hashlib

import pytest
import torch
import torch.nn.functional as F
from test_download import Server

from escnet.cards import find_card
from escnet.config import TaskConfig
from escnet.data.audio import load_audio
from escnet.errors import ConfigError
from escnet.models import SoundClassifier, count_macs, count_parameters, create_model, list_models
from escnet.transforms.features import Featurizer

# 16 kHz, hop 128: 2 s clips are 251 frames, enough for the report's 5×20 kernels in 3 blocks.
SMALL = TaskConfig().replace({"data.sample_rate": 16000, "features.n_fft": 512, "features.win_length": 512,
                              "features.hop_length": 128, "features.n_mels": 64, "data.clip_seconds": 2.0,
                              "model.num_classes": 7})
# Each model's own arguments for the tests: small, and (TINY) cheaper still.
SMALL_ARGS = {"ast": {"dim": 64, "heads": 4, "depth": 2}, "cnn10": {"width": 8}}
# Cheaper still for the learning test: 1 s clips, 3×3 kernels.
TINY = SMALL.replace({"data.clip_seconds": 1.0, "model.num_classes": 4})
TINY_ARGS = {**SMALL_ARGS, **{m: {"kernel_size": (3, 3), "stride": (2, 2)} for m in ("crnn",)},
             **{m: {"kernel_size": (3, 3)} for m in ("baseline", "advanced")}}
# (Adam steps, learning rate, arguments, n_mels) each model needs to memorise 8 clips. Plain
# VGG19 from scratch needs far more than a few dozen steps (it is meant for fine-tuning ImageNet
# weights), so its batch-norm variant stands in; 32 mels keep its 139M-parameter steps affordable.
LEARN = {"vgg19": (7, 1e-4, {"batch_norm": True}, 32), "ast": (30, 1e-3, {}, 64),
         "crnn": (30, 3e-3, {}, 64)}


def build(name: str, config: TaskConfig = SMALL, **args) -> torch.nn.Module:
    """Model ``name`` for ``config``'s input size, with the test's small arguments."""
    args = {**(SMALL_ARGS if config is SMALL else TINY_ARGS).get(name, {}), **args}
    return create_model(name, n_mels=config.features.n_mels, frames=config.length,
                        num_classes=config.model.num_classes, **args)


def test_registry_has_every_model_of_the_report_and_more():
    assert {"baseline", "advanced", "lstm", "crnn", "vgg19", "kumar", "ast", "cnn10"} <= set(list_models())
    with pytest.raises(ConfigError, match="unknown model"):
        build("nope")


@pytest.mark.parametrize("name", list_models())
def test_two_lengths_and_finite_gradients(name):
    torch.manual_seed(0)
    model = build(name)
    for frames in (SMALL.length, SMALL.length + 120):  # the config's clip, and 1 s longer
        x = torch.randn(2, SMALL.features.n_mels, frames)
        out = model(x, torch.tensor([frames, frames - 30]))
        assert out.shape == (2, SMALL.model.num_classes)
    model.zero_grad()
    F.cross_entropy(out, torch.tensor([1, 5])).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum().item() for g in grads) > 0
    assert count_macs(model, SMALL.features.n_mels, SMALL.length) > 0


def test_report_sizes_are_reproduced_at_the_report_settings():
    def report(name):  # the report hard-coded these for its defaults
        return create_model(name, n_mels=64, frames=TaskConfig().length, num_classes=50)

    assert report("baseline").classifier[0].in_features == 20904
    assert report("advanced").classifier[0].in_features == 9984
    assert report("kumar").classifier.in_features == 1250


@pytest.fixture(scope="module")
def real_clips(esc50):
    """8 real clips of 4 classes ``(8, samples)`` at TINY's rate and length, and their labels."""
    from escnet.data.tables import read_esc50

    table = read_esc50(esc50)
    picks = [i for target in (0, 10, 20, 41) for i in [j for j in range(len(table)) if table.labels[j] == target][:2]]
    wav = torch.stack([torch.from_numpy(load_audio(table.paths[i], TINY.data.sample_rate, TINY.length_wav))
                       for i in picks])
    return wav, torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])


# One member of each family learns (the others share its code; test_pretrained builds every
# mn width and checks the PANNs layouts).
LEARNERS = [n for n in list_models() if n not in ("cnn6", "cnn14") and not (n.startswith("mn") and n != "mn04")]


@pytest.mark.parametrize("name", LEARNERS)
def test_can_learn_a_tiny_batch_of_real_clips(name, real_clips):
    wav, labels = real_clips
    steps, lr, args, n_mels = LEARN.get(name, (30, 1e-2, {}, 64))
    config = TINY.replace({"features.n_mels": n_mels})
    feats, _ = Featurizer.from_config(config)(wav)
    torch.manual_seed(0)
    model = create_model(name, n_mels=n_mels, frames=config.length, num_classes=4,
                         **{**TINY_ARGS.get(name, {}), **args})
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = F.cross_entropy(model(feats), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) / 3 < 0.4 * losses[0], losses  # from about ln 4 = 1.39


def test_vgg19_tells_clips_apart_at_initialisation():
    # With PyTorch's default init the 16 plain convs shrank the signal until every clip got the
    # same logits (relative difference 3e-6 here), and from scratch vgg19 stayed at chance.
    torch.manual_seed(0)
    model = build("vgg19").eval()
    with torch.no_grad():
        out = model(torch.randn(2, SMALL.features.n_mels, SMALL.length))
    assert (out[0] - out[1]).abs().max() > 1e-2 * out.abs().max()


def _vgg_torchvision_state(batch_norm: bool) -> dict:
    """A state dict laid out like torchvision's vgg19 / vgg19_bn (3-channel input, 1000 classes)."""
    state = build("vgg19", batch_norm=batch_norm).state_dict()
    state["features.0.weight"] = torch.randn(64, 3, 3, 3)
    state["classifier.6.weight"], state["classifier.6.bias"] = torch.randn(1000, 4096), torch.randn(1000)
    return state


def classifier(config: TaskConfig, name: str, **args) -> SoundClassifier:
    return SoundClassifier.from_config(config.replace({"model.name": name, "model.args": args}))


def test_vgg19_loads_torchvision_weights_from_a_file(tmp_path):
    state = _vgg_torchvision_state(batch_norm=False)
    torch.save(state, tmp_path / "vgg19.pth")
    weights = SMALL.replace({"model.pretrained": str(tmp_path / "vgg19.pth")})
    loaded = classifier(weights, "vgg19").backbone.state_dict()
    torch.testing.assert_close(loaded["features.0.weight"], state["features.0.weight"].sum(1, keepdim=True))
    torch.testing.assert_close(loaded["features.34.weight"], state["features.34.weight"])
    assert loaded["classifier.6.weight"].shape == (SMALL.model.num_classes, 4096)
    with pytest.raises(ConfigError, match="layout does not match"):  # a VGG19 file for VGG19-BN
        classifier(weights, "vgg19", batch_norm=True)


def _panns_cnn10_checkpoint() -> dict:
    """PANNs' checkpoint format: {"model": state} with its feature extractor and AudioSet head."""
    state = build("cnn10", width=64).state_dict()
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in state.items()
             if not k.startswith("classifier.")}
    state |= {"fc_audioset.weight": torch.randn(527, 512), "fc_audioset.bias": torch.randn(527),
              "logmel_extractor.melW": torch.randn(1025, 64)}
    return {"model": state, "iteration": 660000}


def test_cnn10_loads_panns_weights_downloaded_with_checksum(tmp_path):
    ckpt = _panns_cnn10_checkpoint()
    torch.save(ckpt, tmp_path / "Cnn10.pth")
    payload = (tmp_path / "Cnn10.pth").read_bytes()
    server = Server(payload)
    try:
        config = SMALL.replace({"model.pretrained": server.url, "data.cache_dir": str(tmp_path / "cache"),
                                "model.pretrained_sha256": hashlib.sha256(payload).hexdigest()})
        model = classifier(config, "cnn10", width=64).backbone
        torch.testing.assert_close(model.state_dict()["conv_block3.conv2.weight"],
                                   ckpt["model"]["conv_block3.conv2.weight"])
        assert (tmp_path / "cache" / "weights" / "archive.zip").is_file()
        with pytest.raises(ConfigError, match=r"no digest is published.*set model\.pretrained_sha256"):
            classifier(config.replace({"model.pretrained_sha256": ""}), "cnn10", width=64)
    finally:
        server.close()
    with pytest.raises(ConfigError, match=r"layout does not match.*conv_block1"):  # width 32 ≠ PANNs' 64
        classifier(SMALL.replace({"model.pretrained": str(tmp_path / "Cnn10.pth")}), "cnn10", width=32)
    with pytest.raises(ConfigError, match="no such file"):
        classifier(SMALL.replace({"model.pretrained": str(tmp_path / "missing.pth")}), "cnn10")
    for odd in (tmp_path / "cache", "/dev/zero"):  # read as weights, neither would end well
        with pytest.raises(ConfigError, match="not a regular file"):
            classifier(SMALL.replace({"model.pretrained": str(odd)}), "cnn10")
    with pytest.raises(ConfigError, match="cannot load pretrained weights"):
        classifier(SMALL.replace({"model.pretrained": str(tmp_path / "Cnn10.pth")}), "lstm")


def test_channels_last_changes_the_layout_not_the_outputs():
    config = SMALL.replace({"model.name": "cnn10", "model.args.width": 8})
    torch.manual_seed(0)
    plain = SoundClassifier.from_config(config).eval()
    fast = SoundClassifier.from_config(config.replace({"train.channels_last": True})).eval()
    fast.load_state_dict(plain.state_dict())
    conv = fast.backbone.conv_block2.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    wav = torch.randn(3, config.length_wav)
    with torch.no_grad():
        torch.testing.assert_close(fast(wav), plain(wav), rtol=1e-4, atol=1e-4)


def test_cnn10_dropout_comes_from_its_arguments():
    x = torch.randn(4, SMALL.features.n_mels, SMALL.length)
    torch.manual_seed(0)
    model = build("cnn10", dropout=0.0, head_dropout=0.0).train()
    # without dropout, train mode differs from eval mode only by batch statistics: same twice
    torch.testing.assert_close(model(x), model(x))
    noisy = build("cnn10", dropout=0.5, head_dropout=0.5).train()
    assert not torch.allclose(noisy(x), noisy(x))


def _panns_layout(channels: list[int], kernel: int) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of PANNs' Cnn6/Cnn14 ``state_dict`` (audioset_tagging_cnn's
    models.py), written out from its definition, with its AudioSet head and feature extractor."""
    shapes: dict[str, tuple[int, ...]] = {}

    def bn(name, n):
        shapes.update({f"{name}.weight": (n,), f"{name}.bias": (n,), f"{name}.running_mean": (n,),
                       f"{name}.running_var": (n,), f"{name}.num_batches_tracked": ()})

    bn("bn0", 64)
    for i, (cin, cout) in enumerate(zip([1, *channels[:-1]], channels, strict=True), start=1):
        shapes[f"conv_block{i}.conv1.weight"] = (cout, cin, kernel, kernel)
        bn(f"conv_block{i}.bn1", cout)
        if kernel == 3:
            shapes[f"conv_block{i}.conv2.weight"] = (cout, cout, 3, 3)
            bn(f"conv_block{i}.bn2", cout)
    last = channels[-1]
    shapes |= {"fc1.weight": (last, last), "fc1.bias": (last,), "fc_audioset.weight": (527, last),
               "fc_audioset.bias": (527,), "spectrogram_extractor.stft.conv_real.weight": (513, 1, 1024),
               "logmel_extractor.melW": (513, 64)}
    return shapes


@pytest.mark.parametrize(("name", "channels", "kernel", "millions"), [
    ("cnn6", [64, 128, 256, 512], 5, 4.8), ("cnn14", [64, 128, 256, 512, 1024, 2048], 3, 80.8)])
def test_panns_cnn6_and_cnn14_take_panns_checkpoints_by_name_and_shape(name, channels, kernel, millions):
    model = create_model(name, n_mels=64, frames=101, num_classes=527)
    assert count_parameters(model) / 1e6 == pytest.approx(millions, abs=0.05)  # PANNs' table
    torch.manual_seed(0)
    state = {k: torch.randn(shape) if shape else torch.tensor(7) for k, shape in _panns_layout(channels, kernel).items()}
    model.load_pretrained(state, f"{name}.pth")
    own = model.state_dict()
    assert all(torch.equal(own[k], state[k]) for k in own if not k.startswith("classifier."))
    state[f"conv_block{len(channels)}.conv1.weight"] = torch.randn(1, 1, 3, 3)
    with pytest.raises(ConfigError, match="layout does not match"):
        model.load_pretrained(state, f"{name}.pth")
    card = find_card("audioset", name)  # the card of PANNs' checkpoint of this layout
    assert card.name == f"panns_{name}" and card.model_args == {"width": 64}
    assert card.weights.name == f"{name.capitalize()}_mAP={dict(cnn6='0.343', cnn14='0.431')[name]}.pth"
