"""The README's "Use the loss in your project" snippets run as written (on CPU: reference).

Each ```python block of that section is executed; the Hugging Face one gets a tiny real
``Wav2Vec2ForPreTraining`` (the ``compat`` extra) and must reproduce the model's own total
loss, the others are self-contained and must give finite losses and gradients.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from wav2vec2_fixtures import hf_inputs, tiny_model

README = Path(__file__).resolve().parents[1] / "README.md"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _snippets() -> list[str]:
    text = README.read_text()
    section = text[text.index("## Use the loss in your project") : text.index("## Benchmarks")]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    return [b.replace('device = "cuda"', f'device = "{DEVICE}"') for b in blocks]


def test_the_section_has_the_four_recipes():
    snippets = _snippets()
    assert len(snippets) == 4
    assert "model(input_values" in snippets[0] and "cpc_info_nce" in snippets[2]


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
