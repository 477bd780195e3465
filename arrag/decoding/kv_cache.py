"""A KV cache written in place: the decoding loop knows how long its sequence will grow, so the cache is allocated
once for all of it.

transformers' DynamicCache appends each step's keys and values with torch.cat, which copies the whole cache into a
new, larger tensor at every step: for Janus-Pro at 384 px (a 576-token image after the prompt, batch 8 with
guidance) that is ~40 MB per layer and tensor by the last step, and on a CPU the copies and the fresh pages they
fault in cost as much again as the layer's weights (measured with `arrag bench generate`; docs/measurements.md,
"The CPU rehearsal of the paper path"). Here every step writes its token's states into the buffers, and attention
reads a view of the filled part: the same values in the same order, so the same logits and tokens.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class PreallocatedLayer(DynamicLayer):
    """One layer's keys and values [B, heads, capacity, head_dim], allocated at the first update; `keys`/`values`
    are views of the filled positions [B, heads, length, head_dim], as DynamicLayer's are whole tensors."""

    is_croppable = False  # a view cannot be cropped in place; the decoding loop never crops

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self.length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        b, heads, _, _ = key_states.shape
        self.device = key_states.device
        self.key_buffer = key_states.new_empty(b, heads, self.capacity, key_states.shape[-1])
        self.value_buffer = value_states.new_empty(b, heads, self.capacity, value_states.shape[-1])
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self.capacity:
            raise ValueError(f"the KV cache holds {self.capacity} positions; position {end} does not fit")
        self.key_buffer[:, :, self.length : end] = key_states
        self.value_buffer[:, :, self.length : end] = value_states
        self.length = end
        self.keys, self.values = self.key_buffer[:, :, :end], self.value_buffer[:, :, :end]
        return self.keys, self.values

    def reset(self) -> None:
        self.length = 0
        super().reset()


def preallocated_cache(text_config, capacity: int) -> DynamicCache:
    """A DynamicCache (so transformers treats it as one) whose full-attention layers hold `capacity` positions
    each; layers of any other kind (sliding windows) stay as transformers makes them."""
    cache = DynamicCache(config=text_config)
    cache.layers = [PreallocatedLayer(capacity) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache
