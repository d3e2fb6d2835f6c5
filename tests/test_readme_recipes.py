"""The README's "Use the loss in your project" snippets run as written (on CPU: reference).

Each ```python block of that section is executed; the Hugging Face one gets a tiny real
``Wav2Vec2ForPreTraining`` (the ``compat`` extra) and must reproduce the model's own total
loss, the others (the four toolkits' drop-ins among them) are self-contained and must give
finite losses and gradients.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from wav2vec2_fixtures import hf_inputs, tiny_model

README = Path(__file__).resolve().parents[1] / "README.md"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# The toolkits' drop-ins, after the general form.
TOOLKITS = [(4, "fairseq"), (5, "speechbrain"), (6, "nemo"), (7, "cpc_audio")]


def _snippets() -> list[str]:
    text = README.read_text()
    section = text[text.index("## Use the loss in your project") : text.index("## Benchmarks")]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    return [b.replace('device = "cuda"', f'device = "{DEVICE}"') for b in blocks]


def test_the_section_has_the_eight_recipes():
    snippets = _snippets()
    assert len(snippets) == 8
    assert "model(input_values" in snippets[0] and "cpc_info_nce" in snippets[2]
    for index, toolkit in TOOLKITS:
        assert f"from cpc_fast.integrations.{toolkit} import" in snippets[index]


@pytest.mark.huggingface
def test_hugging_face_recipe_gives_the_model_s_own_loss():
    model = tiny_model()
    wave, mask, _ = hf_inputs(model, seed=2)
    scope = {"model": model, "input_values": wave, "mask_time_indices": mask}
    exec(_snippets()[0], scope)
    theirs = model(wave, mask_time_indices=mask, sampled_negative_indices=scope["neg"]).loss
    torch.testing.assert_close(scope["loss"], theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("index, name", [(1, "fairseq"), (2, "cpc_audio"), (3, "general")])
def test_self_contained_recipes_run(index, name):
    torch.manual_seed(0)
    scope: dict = {}
    exec(_snippets()[index], scope)
    loss = scope["out"].loss if name == "cpc_audio" else scope["loss"]
    assert torch.isfinite(loss)
    leaves = [v for v in scope.values() if isinstance(v, torch.Tensor) and v.is_leaf]
    grads = [v.grad for v in leaves if v.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("index, name", TOOLKITS)
def test_toolkit_recipes_run(index, name):
    torch.manual_seed(0)
    scope: dict = {}
    exec(_snippets()[index], scope)
    loss = scope["loss"]
    assert loss.dim() == 0 and torch.isfinite(loss)
    tensors = [v for v in scope.values() if isinstance(v, torch.Tensor)]
    leaves = [v for v in tensors if v.is_leaf and v.requires_grad]
    assert leaves and all(v.grad is not None and torch.isfinite(v.grad).all() for v in leaves)
    accuracy = {
        "fairseq": lambda: scope["accuracy"],
        "speechbrain": lambda: scope["accuracy"],
        "cpc_audio": lambda: scope["all_acc"],
    }.get(name)
    if accuracy is not None:  # NeMo reports none
        assert ((accuracy() >= 0) & (accuracy() <= 1)).all()
