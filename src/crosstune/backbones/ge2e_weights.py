"""The GE2E speaker encoder from ``resemblyzer==0.1.4``: its packaged weights, its network and its mel input.

GE2E (Wan et al. 2018, "Generalized End-to-End Loss for Speaker Verification",
https://arxiv.org/abs/1710.10467) trains a 3-layer LSTM so that utterances of one speaker map
close together on the unit sphere. Resemblyzer (Apache-2.0) ships such an encoder as
``resemblyzer/pretrained.pt``. Its embedding of a mel spectrogram ``x_1..x_T`` is

    h_T = top LSTM layer's final hidden state,
    e = ReLU(W h_T + b) / ||ReLU(W h_T + b)||_2.

The ``resemblyzer`` package itself is never imported: its ``__init__`` imports ``webrtcvad`` and
``librosa``, which are not installed here. We only read its weights file (located with
``importlib.util.find_spec``, which does not execute a top-level package) and re-implement its
network in torch; its input, librosa's 40-bin power mel at 16 kHz (25 ms Hann window, 10 ms hop,
centred frames, zero padding), is ``crosstune.backbones.audio_features.ge2e_mel``. Resemblyzer's volume
normalisation and VAD trimming are not applied.

The 3-layer ``nn.LSTM`` is split into three single-layer LSTMs (``lstm0``, ``lstm1``, ``lstm2``)
so that freezing can count them as blocks and the frozen-prefix cache can run the bottom ones once;
the split is numerically the same network (stacked LSTMs feed each layer's full output sequence to
the next, with no dropout at inference).
"""

from __future__ import annotations

import importlib.util
import pickle
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from crosstune.errors import ArtifactError, BackboneUnavailableError

SAMPLING_RATE = 16_000  # Hz; resemblyzer resamples every input to this
N_FFT = 400  # 25 ms window at 16 kHz (resemblyzer's mel_window_length)
HOP_LENGTH = 160  # 10 ms step at 16 kHz (resemblyzer's mel_window_step)
NUM_MEL_CHANNELS = 40  # resemblyzer's mel_n_channels
HIDDEN_SIZE = 256  # model_hidden_size
EMBEDDING_SIZE = 256  # model_embedding_size
NUM_LAYERS = 3  # model_num_layers
PARTIAL_FRAMES = 160  # 1.6 s: the utterance length resemblyzer embeds at a time

INSTALL_HINT = "pip install --no-deps resemblyzer==0.1.4 (make install does this)"

_LSTM_PARAMETERS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
REQUIRED_KEYS: tuple[str, ...] = tuple(
    f"lstm.{name}_l{layer}" for layer in range(NUM_LAYERS) for name in _LSTM_PARAMETERS
) + ("linear.weight", "linear.bias")


def packaged_ge2e_weights() -> Path:
    """Path of ``pretrained.pt`` inside the installed ``resemblyzer`` package, found without importing it.

    ``find_spec`` on a top-level package only locates it; importing would run its ``__init__``, which
    needs ``webrtcvad``.

    Raises:
        BackboneUnavailableError: resemblyzer is not installed, or its weights file is missing.
    """
    spec = importlib.util.find_spec("resemblyzer")
    if spec is None or not spec.submodule_search_locations:
        raise BackboneUnavailableError(f"the GE2E speaker encoder needs resemblyzer's weights: {INSTALL_HINT}")
    for location in spec.submodule_search_locations:
        path = Path(location) / "pretrained.pt"
        if path.is_file():
            return path
    raise BackboneUnavailableError(
        f"resemblyzer is installed at {list(spec.submodule_search_locations)} but has no pretrained.pt; "
        f"reinstall it: {INSTALL_HINT}"
    )


def load_ge2e_state(path: Path) -> dict[str, torch.Tensor]:
    """Read the encoder's parameters from a resemblyzer checkpoint.

    The file is a legacy (non-zip) ``torch.save`` of ``{"step", "model_state", "optimizer_state"}``
    holding only tensors and plain Python values, so ``weights_only=True`` loads it without
    running arbitrary pickled code. ``similarity_weight``/``similarity_bias`` (the GE2E loss's
    scale and offset) and the optimizer state are dropped.

    Returns:
        ``lstm.{weight_ih,weight_hh,bias_ih,bias_hh}_l{0,1,2}``, ``linear.weight``, ``linear.bias``.

    Raises:
        BackboneUnavailableError: the file does not exist.
        ArtifactError: the file is unreadable, or lacks a key or has a wrong shape (names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise BackboneUnavailableError(f"no GE2E weights at {path}; for the packaged ones: {INSTALL_HINT}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, ValueError, OSError) as error:
        raise ArtifactError(
            f"cannot read GE2E weights {path} ({type(error).__name__}: {error}); reinstall: {INSTALL_HINT}"
        ) from error
    model_state = checkpoint.get("model_state") if isinstance(checkpoint, dict) else None
    if not isinstance(model_state, dict):
        raise ArtifactError(f"GE2E weights {path} have no 'model_state' dict; reinstall: {INSTALL_HINT}")
    missing = [key for key in REQUIRED_KEYS if not isinstance(model_state.get(key), torch.Tensor)]
    if missing:
        raise ArtifactError(f"GE2E weights {path} lack {missing}; reinstall: {INSTALL_HINT}")
    state = {key: model_state[key] for key in REQUIRED_KEYS}
    expected = _expected_shapes()
    wrong = {key: tuple(state[key].shape) for key in REQUIRED_KEYS if tuple(state[key].shape) != expected[key]}
    if wrong:
        raise ArtifactError(
            f"GE2E weights {path} have shapes {wrong}, expected {({key: expected[key] for key in wrong})}"
        )
    return state


def _expected_shapes() -> dict[str, tuple[int, ...]]:
    gates = 4 * HIDDEN_SIZE  # input, forget, cell and output gates stacked
    shapes: dict[str, tuple[int, ...]] = {}
    for layer in range(NUM_LAYERS):
        input_size = NUM_MEL_CHANNELS if layer == 0 else HIDDEN_SIZE
        shapes[f"lstm.weight_ih_l{layer}"] = (gates, input_size)
        shapes[f"lstm.weight_hh_l{layer}"] = (gates, HIDDEN_SIZE)
        shapes[f"lstm.bias_ih_l{layer}"] = (gates,)
        shapes[f"lstm.bias_hh_l{layer}"] = (gates,)
    shapes["linear.weight"] = (EMBEDDING_SIZE, HIDDEN_SIZE)
    shapes["linear.bias"] = (EMBEDDING_SIZE,)
    return shapes


class GE2EEncoder(nn.Module):
    """Resemblyzer's speaker encoder with its LSTM split into one module per layer.

    ``e = ReLU(W h_T + b) / ||ReLU(W h_T + b)||_2`` where ``h_T`` is ``lstm2``'s final hidden state.

    Shape:
        mel (B, T, 40) power mel spectrogram (see :func:`ge2e_mel`) -> (B, 256) unit-norm, non-negative
    """

    def __init__(self) -> None:
        super().__init__()
        self.lstm0 = nn.LSTM(NUM_MEL_CHANNELS, HIDDEN_SIZE, batch_first=True)
        self.lstm1 = nn.LSTM(HIDDEN_SIZE, HIDDEN_SIZE, batch_first=True)
        self.lstm2 = nn.LSTM(HIDDEN_SIZE, HIDDEN_SIZE, batch_first=True)
        self.linear = nn.Linear(HIDDEN_SIZE, EMBEDDING_SIZE)

    @property
    def blocks(self) -> list[nn.LSTM]:
        """The LSTM layers, bottom first: the units freezing counts."""
        return [self.lstm0, self.lstm1, self.lstm2]

    def forward_layer(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Run one LSTM layer over a whole sequence.

        Shape:
            x (B, T, 40) for index 0, (B, T, 256) otherwise -> (B, T, 256)
        """
        if not 0 <= index < NUM_LAYERS:
            raise ValueError(f"LSTM layer index {index} not in 0..{NUM_LAYERS - 1}")
        output, _ = self.blocks[index](x)
        return output

    def embed(self, last_layer_sequence: torch.Tensor) -> torch.Tensor:
        """Project the top layer's final hidden state and put it on the unit sphere.

        For an unpacked sequence the last output step is the final hidden state ``h_T``.
        ``F.normalize`` guards the all-zero ReLU output that resemblyzer's plain division turns into NaN.

        Shape:
            last_layer_sequence (B, T, 256) -> (B, 256)
        """
        raw = F.relu(self.linear(last_layer_sequence[:, -1]))
        return F.normalize(raw, p=2.0, dim=1)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """Shape: mel (B, T, 40) -> (B, 256)"""
        x = mel
        for index in range(NUM_LAYERS):
            x = self.forward_layer(index, x)
        return self.embed(x)

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> GE2EEncoder:
        """Build the encoder from resemblyzer's parameter names (``lstm.weight_ih_l1`` -> ``lstm1.weight_ih_l0``)."""
        missing = [key for key in REQUIRED_KEYS if key not in state]
        if missing:
            raise KeyError(f"GE2E state lacks {missing}; load it with load_ge2e_state")
        mapped = {
            f"lstm{layer}.{name}_l0": state[f"lstm.{name}_l{layer}"]
            for layer in range(NUM_LAYERS)
            for name in _LSTM_PARAMETERS
        }
        mapped["linear.weight"] = state["linear.weight"]
        mapped["linear.bias"] = state["linear.bias"]
        encoder = cls()
        encoder.load_state_dict(mapped, strict=True)
        return encoder
