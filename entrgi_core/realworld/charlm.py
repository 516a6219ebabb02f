"""textgenrnn's pretrained character-level language model, in plain torch (the fluency judge).

textgenrnn (MIT; Max Woolf) ships ``textgenrnn_weights.hdf5``: a Keras model trained on a large
corpus of short human-written texts. For the next character it reads the last ``window`` (40)
tokens, left-padded with index 0 and started by the meta token ``<s>``: an embedding (100),
two LSTM layers (128 each, sigmoid recurrent activation), the concatenation of the three,
an attention-weighted average over the window, and a softmax over the vocabulary (the ``<s>``
token also ends a text). Keras stores an LSTM's kernels per layer as ``(input, 4 units)`` in the
gate order i, f, c, o, which is torch's i, f, g, o transposed; these weights were saved by Keras's
CuDNN LSTM, which stores each gate's kernels transposed (the input kernel in column-major order)
and the input and the recurrent bias one after the other, as torch keeps them. We read the
weights with ``h5py``; TensorFlow is never needed.

``CharLM.log_prob(texts)`` is each text's mean log-probability per character (the end token
included): higher is more fluent, human-like text.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor, nn

META = "<s>"


class CharLM(nn.Module):
    def __init__(self, vocab: dict[str, int], embed: int = 100, hidden: int = 128, layers: int = 2, window: int = 40):
        super().__init__()
        self.vocab, self.window = vocab, window
        classes = len(vocab) + 1                                        # index 0: padding
        self.embedding = nn.Embedding(classes, embed)
        self.rnns = nn.ModuleList(nn.LSTM(embed if i == 0 else hidden, hidden, batch_first=True) for i in range(layers))
        self.attention = nn.Linear(embed + layers * hidden, 1, bias=False)
        self.output = nn.Linear(embed + layers * hidden, classes)

    @classmethod
    def load(cls, weights: Path, vocab: Path) -> "CharLM":
        """The model from textgenrnn's ``textgenrnn_weights.hdf5`` and ``textgenrnn_vocab.json``."""
        import h5py

        with h5py.File(weights, "r") as f:
            def w(layer: str, name: str) -> Tensor:
                group = f[layer][layer] if layer in f[layer] else f[layer]
                key = next(k for k in group.keys() if k.startswith(name))
                return torch.from_numpy(group[key][()]).float()

            layers = sum(1 for k in f.keys() if k.startswith("rnn_") and k[4:].isdigit())   # not rnn_concat
            embed, hidden = w("embedding", "embeddings").shape[1], w("rnn_1", "recurrent_kernel").shape[0]
            model = cls(json.loads(Path(vocab).read_text(encoding="utf-8")), embed, hidden, layers)

            with torch.no_grad():
                model.embedding.weight.copy_(w("embedding", "embeddings"))
                for i, rnn in enumerate(model.rnns):
                    kernel, recurrent, bias = (w(f"rnn_{i + 1}", n) for n in ("kernel", "recurrent_kernel", "bias"))
                    four = rnn.bias_ih_l0.shape[0]
                    if bias.shape[0] == 2 * four:                                # saved by Keras's CuDNN LSTM
                        kernel, recurrent = _from_cudnn(kernel, recurrent)
                        bias_ih, bias_hh = bias[:four], bias[four:]
                    else:
                        bias_ih, bias_hh = bias, torch.zeros(four)
                    rnn.weight_ih_l0.copy_(kernel.T)                            # (4H, in): i, f, g, o
                    rnn.weight_hh_l0.copy_(recurrent.T)
                    rnn.bias_ih_l0.copy_(bias_ih)
                    rnn.bias_hh_l0.copy_(bias_hh)
                model.attention.weight.copy_(w("attention", "attention_W").T)     # (1, D)
                model.output.weight.copy_(w("output", "kernel").T)                # (C, D)
                model.output.bias.copy_(w("output", "bias"))
        return model.eval().requires_grad_(False)

    def encode(self, text: str) -> list[int]:
        """``<s>`` then each character's index (0 for a character it does not know), then ``<s>``."""
        meta = self.vocab[META]
        return [meta] + [self.vocab.get(c, 0) for c in text] + [meta]

    def next_log_probs(self, windows: Tensor) -> Tensor:
        """(N, C) log-probabilities of the next token after each left-padded window (N, W)."""
        x = self.embedding(windows)                                     # (N, W, E)
        states, h = [x], x
        for rnn in self.rnns:
            h = rnn(h)[0]                                               # (N, W, H)
            states.append(h)
        seq = torch.cat(states, -1)                                     # (N, W, E + 2H)
        weights = torch.softmax(self.attention(seq)[..., 0], -1)        # (N, W) over the window
        return torch.log_softmax(self.output((seq * weights[..., None]).sum(1)), -1)

    @torch.no_grad()
    def log_prob(self, texts: list[str], chunk: int = 2048) -> list[float]:
        """Each text's mean log-probability per predicted token (its characters and the end)."""
        out = []
        for text in texts:
            ids = torch.tensor(self.encode(text))
            pad = torch.cat([torch.zeros(self.window - 1, dtype=torch.long), ids])
            windows = pad.unfold(0, self.window, 1)[: len(ids) - 1]     # (T, W): the context of tokens 1..T
            targets = ids[1:]
            lp = torch.cat([self.next_log_probs(w).gather(1, t[:, None])[:, 0]
                            for w, t in zip(windows.split(chunk), targets.split(chunk))])
            out.append(float(lp.mean()))
        return out


def _from_cudnn(kernel: Tensor, recurrent: Tensor) -> tuple[Tensor, Tensor]:
    """Keras's layout of a CuDNN LSTM's kernels (what Keras itself does when it loads them into a
    plain LSTM): per gate block, the input kernel is stored transposed in column-major order and
    the recurrent kernel transposed."""
    import numpy as np

    k = np.hstack([b.T.reshape(b.shape, order="F") for b in np.hsplit(kernel.numpy(), 4)])
    r = np.hstack([b.T for b in np.hsplit(recurrent.numpy(), 4)])
    return torch.from_numpy(np.ascontiguousarray(k)), torch.from_numpy(np.ascontiguousarray(r))
