"""vtc's vLLM model classes: the stock Qwen2.5-VL and Qwen3-VL models that also take a pruned vtc file.

A vtc item is `multi_modal_data["video"] = {"video_embeds": [K, D], "video_grid_thw": [1, 3],
"second_per_grid_ts": [1], "video_retention_mask": [t·(h/2)·(w/2)] bool}` (what `vtc export --to vllm` writes; the
mask is over the full merged grid in (frame, row, column) order and holds K True values, the embeddings are the
kept tokens in that order). With the mask:

- the data parser sizes `video_embeds` by the kept count (`MultiModalFieldConfig.flat_from_sizes`) and carries the
  mask, sized by the full grid;
- the prompt update replaces the single `<|video_pad|>` by K pads (not t·h·w/4);
- `_process_video_input` splits the batch's embeddings by the kept counts;
- `get_mrope_input_positions` applies Qwen's rule to the full grid (temporal index ⌊t'·second_per_grid_t·
  tokens_per_second⌋, row, column, + the text before), keeps the masked columns, and starts the text after the
  video at the full grid's largest position + 1 — the positions the tokens had in the uncompressed sequence, as
  `vtc.hf.video_inputs(..., after_video="reference")` gives them to transformers.

Qwen3-VL (`timestamps` instead of `second_per_grid_ts`, embeddings [K, D·(1 + L)] with the DeepStack planes): each
frame's `<t seconds><|vision_start|>` + that frame's kept count of pads + `<|vision_end|>`; each frame is a
(1, h, w) grid after its timestamp text, its kept columns keep their positions, and the text after it starts at the
full frame's largest position + 1.

Without a mask every method falls through to the stock one, so the class may take the stock architecture name.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from vllm.model_executor.models.qwen2_5_vl import (
    Qwen2_5_VLDummyInputsBuilder,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLMultiModalProcessor,
    Qwen2_5_VLProcessingInfo,
)
from vllm.model_executor.models.qwen2_vl import Qwen2VLMultiModalDataParser, _create_qwen2vl_field_factory
from vllm.model_executor.models.qwen3_vl import (
    Qwen3VLDummyInputsBuilder,
    Qwen3VLForConditionalGeneration,
    Qwen3VLMultiModalDataParser,
    Qwen3VLMultiModalProcessor,
    Qwen3VLProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalFieldConfig
from vllm.multimodal.parse import DictEmbeddingItems
from vllm.multimodal.processing import PromptReplacement

MASK = "video_retention_mask"


def _flat_mask(mask: Any) -> torch.Tensor:
    """A batch's masks as one flat bool tensor (vLLM concatenates flat fields; a list when shapes differ)."""
    if isinstance(mask, (list, tuple)):
        return torch.cat([torch.as_tensor(m).reshape(-1) for m in mask]).bool()
    return torch.as_tensor(mask).reshape(-1).bool()


def _field_factory(merge: int, time_field: bool = True):
    """The stock Qwen2-VL field layout (with Qwen2.5-VL's `second_per_grid_ts` if `time_field`), with `video_embeds`
    sized by the kept counts when a mask is given."""
    stock = _create_qwen2vl_field_factory(merge)

    def fields(hf_inputs: Mapping[str, torch.Tensor]) -> Mapping[str, MultiModalFieldConfig]:
        config = dict(stock(hf_inputs))
        if time_field:
            config["second_per_grid_ts"] = MultiModalFieldConfig.batched("video", keep_on_cpu=True)
        if MASK in hf_inputs:
            grid = torch.as_tensor(hf_inputs["video_grid_thw"]).reshape(-1, 3)
            full = grid.prod(-1) // merge // merge
            mask = _flat_mask(hf_inputs[MASK])
            if int(full.sum()) != mask.numel():
                raise ValueError(f"{MASK} holds {mask.numel()} entries; video_grid_thw {grid.tolist()} has "
                                 f"{int(full.sum())} merged tokens.")
            kept = torch.stack([m.sum() for m in mask.split(full.tolist())])
            config["video_embeds"] = MultiModalFieldConfig.flat_from_sizes("video", kept)
            config[MASK] = MultiModalFieldConfig.flat_from_sizes("video", full, keep_on_cpu=True)
        return config

    return fields


class VtcQwen2VLDataParser(Qwen2VLMultiModalDataParser):
    """Qwen2-VL's parser; a video dict may also carry `video_retention_mask` (and `second_per_grid_ts`)."""

    def _parse_video_data(self, data: Any) -> Any:
        if isinstance(data, dict) and MASK in data:
            required, optional = self.embedding_field_sets("video")
            return DictEmbeddingItems(data, modality="video", required_fields=required,
                                      optional_fields=set(optional) | {MASK},
                                      fields_factory=_field_factory(self._spatial_merge_size))
        return super()._parse_video_data(data)


class VtcQwen2_5_VLProcessingInfo(Qwen2_5_VLProcessingInfo):
    def get_data_parser(self) -> VtcQwen2VLDataParser:
        return VtcQwen2VLDataParser(self.get_hf_config().vision_config.spatial_merge_size,
                                    video_needs_metadata=True,
                                    expected_hidden_size=self._get_expected_hidden_size(),
                                    allow_missing_mm_embeddings=self.allow_missing_mm_embeddings)


class VtcQwen2_5_VLMultiModalProcessor(Qwen2_5_VLMultiModalProcessor):
    def _get_mm_fields_config(self, hf_inputs: Any, hf_processor_mm_kwargs: Mapping[str, object]
                              ) -> Mapping[str, MultiModalFieldConfig]:
        config = dict(super()._get_mm_fields_config(hf_inputs, hf_processor_mm_kwargs))
        if MASK in hf_inputs:
            config.update(_field_factory(self.info.get_hf_config().vision_config.spatial_merge_size)(hf_inputs))
        return config

    def _get_prompt_updates(self, mm_items: Any, hf_processor_mm_kwargs: Mapping[str, Any],
                            out_mm_kwargs: Any) -> Sequence[Any]:
        """The stock updates; a masked video's single pad becomes K pads."""
        updates = list(super()._get_prompt_updates(mm_items, hf_processor_mm_kwargs, out_mm_kwargs))
        for i, update in enumerate(updates):
            if update.modality != "video":
                continue
            stock = update.replacement
            pad = update.target[0]

            def replacement(item_idx: int, stock: Any = stock, pad: int = pad) -> Any:
                item = out_mm_kwargs["video"][item_idx]
                if MASK in item:
                    return [pad] * int(item[MASK].data.sum())
                return stock(item_idx)

            updates[i] = PromptReplacement(modality="video", target=update.target, replacement=replacement)
        return updates


class _MaskedVideoEmbeds:
    """The model side shared by vtc's classes: the batch's masks ride along the video input; embeddings split by
    the kept counts.  Mixed in before the stock class, whose methods `super()` reaches."""

    def _parse_and_validate_video_input(self, **kwargs: object) -> Any:
        mask = kwargs.pop(MASK, None)
        video_input = super()._parse_and_validate_video_input(**kwargs)
        if video_input is not None:
            video_input.video_retention_mask = None if mask is None else _flat_mask(mask)
        return video_input

    def _process_video_input(self, video_input: Any) -> tuple[torch.Tensor, ...]:
        mask = video_input.get(MASK)
        if mask is None or video_input["type"] != "video_embeds":
            return super()._process_video_input(video_input)
        merge = self.visual.spatial_merge_size
        full = (video_input["video_grid_thw"].prod(-1) // merge // merge).tolist()
        kept = [int(m.sum()) for m in mask.split(full)]
        return video_input["video_embeds"].type(self.visual.dtype).split(kept)


@MULTIMODAL_REGISTRY.register_processor(VtcQwen2_5_VLMultiModalProcessor, info=VtcQwen2_5_VLProcessingInfo,
                                        dummy_inputs=Qwen2_5_VLDummyInputsBuilder)
class VtcQwen2_5_VLForConditionalGeneration(_MaskedVideoEmbeds, Qwen2_5_VLForConditionalGeneration):
    """Qwen2.5-VL that serves pruned vtc files (see the module docstring); the stock model without a mask."""

    def _video_masks(self, mm_features: list[Any]) -> Iterator[np.ndarray | None]:
        for f in sorted(mm_features, key=lambda f: f.mm_position.offset):
            item = f.data.get(MASK) if f.modality == "video" and f.data is not None else None
            yield None if item is None else _flat_mask(item.data).numpy()

    def get_mrope_input_positions(self, input_tokens: list[int], mm_features: list[Any]
                                  ) -> tuple[torch.Tensor, int]:
        """Qwen's M-RoPE rule on each item's full grid, keeping a masked video's kept columns; text after an item
        starts at the full grid's largest position + 1."""
        if not any(m is not None for m in self._video_masks(mm_features)):
            return super().get_mrope_input_positions(input_tokens, mm_features)
        parts: list[np.ndarray] = []
        st, next_start = 0, 0
        for (offset, t, h, w, t_factor), mask in zip(self.iter_mm_grid_thw(mm_features),
                                                      self._video_masks(mm_features), strict=True):
            text_len = offset - st
            parts.append(np.broadcast_to(np.arange(text_len), (3, text_len)) + next_start)
            grid = np.indices((t, h, w))
            if t_factor != 1.0:
                grid[0] = (grid[0] * t_factor).astype(np.int64)
            grid = grid.reshape(3, -1) + text_len + next_start
            next_start = int(grid.max()) + 1
            if mask is not None:
                grid = grid[:, mask]
            parts.append(grid)
            st = offset + grid.shape[1]
        if st < len(input_tokens):
            text_len = len(input_tokens) - st
            parts.append(np.broadcast_to(np.arange(text_len), (3, text_len)) + next_start)
        positions = np.concatenate(parts, axis=1).reshape(3, -1)
        return torch.from_numpy(positions), int(positions.max()) + 1 - len(input_tokens)


# -- Qwen3-VL: every frame is its own group after its timestamp text; the kept count is per frame ------------------


class VtcQwen3VLDataParser(Qwen3VLMultiModalDataParser):
    """Qwen3-VL's parser; a video dict may also carry `video_retention_mask`."""

    def _parse_video_data(self, data: Any) -> Any:
        if isinstance(data, dict) and MASK in data:
            required, optional = self.embedding_field_sets("video")
            return DictEmbeddingItems(data, modality="video", required_fields=required,
                                      optional_fields=set(optional) | {MASK},
                                      fields_factory=_field_factory(self._spatial_merge_size, time_field=False))
        return super()._parse_video_data(data)


class VtcQwen3VLProcessingInfo(Qwen3VLProcessingInfo):
    def get_data_parser(self) -> VtcQwen3VLDataParser:
        return VtcQwen3VLDataParser(self.get_hf_config().vision_config.spatial_merge_size,
                                    video_needs_metadata=True,
                                    expected_hidden_size=self._get_expected_hidden_size(),
                                    allow_missing_mm_embeddings=self.allow_missing_mm_embeddings)


class VtcQwen3VLMultiModalProcessor(Qwen3VLMultiModalProcessor):
    def _get_mm_fields_config(self, hf_inputs: Any, hf_processor_mm_kwargs: Mapping[str, object]
                              ) -> Mapping[str, MultiModalFieldConfig]:
        config = dict(super()._get_mm_fields_config(hf_inputs, hf_processor_mm_kwargs))
        if MASK in hf_inputs:
            merge = self.info.get_hf_config().vision_config.spatial_merge_size
            config.update(_field_factory(merge, time_field=False)(hf_inputs))
        return config

    def _get_prompt_updates(self, mm_items: Any, hf_processor_mm_kwargs: Mapping[str, Any],
                            out_mm_kwargs: Any) -> Sequence[Any]:
        """The stock updates; a masked video's frames get their kept counts of pads after their timestamps."""
        updates = list(super()._get_prompt_updates(mm_items, hf_processor_mm_kwargs, out_mm_kwargs))
        config = self.info.get_hf_config()
        tokenizer = self.info.get_tokenizer()
        for i, update in enumerate(updates):
            if update.modality != "video":
                continue
            stock = update.replacement

            def replacement(item_idx: int, stock: Any = stock) -> Any:
                item = out_mm_kwargs["video"][item_idx]
                if MASK not in item:
                    return stock(item_idx)
                t = int(item["video_grid_thw"].data[0])
                per_frame = _flat_mask(item[MASK].data).reshape(t, -1).sum(1).tolist()
                return Qwen3VLMultiModalProcessor.get_video_repl(
                    tokens_per_frame=[int(n) for n in per_frame], timestamps=item["timestamps"].data,
                    tokenizer=tokenizer, vision_start_token_id=config.vision_start_token_id,
                    vision_end_token_id=config.vision_end_token_id, video_token_id=config.video_token_id,
                    select_token_id=True)

            updates[i] = PromptReplacement(modality="video", target=update.target, replacement=replacement)
        return updates


@MULTIMODAL_REGISTRY.register_processor(VtcQwen3VLMultiModalProcessor, info=VtcQwen3VLProcessingInfo,
                                        dummy_inputs=Qwen3VLDummyInputsBuilder)
class VtcQwen3VLForConditionalGeneration(_MaskedVideoEmbeds, Qwen3VLForConditionalGeneration):
    """Qwen3-VL that serves pruned vtc files (embeddings with their DeepStack planes concatenated, [K, D·(1 + L)]);
    the stock model without a mask."""

    def get_mrope_input_positions(self, input_tokens: list[int], mm_features: list[Any]
                                  ) -> tuple[torch.Tensor, int]:
        """Qwen3-VL's rule (each frame a (1, h, w) grid after its timestamp text, the text after a frame at the
        frame's largest position + 1) on the full frames, keeping a masked frame's kept columns."""
        masks = [_flat_mask(f.data[MASK].data).numpy()
                 if f.modality == "video" and f.data is not None and MASK in f.data else None
                 for f in sorted(mm_features, key=lambda f: f.mm_position.offset)]
        if all(m is None for m in masks):
            return super().get_mrope_input_positions(input_tokens, mm_features)
        cfg = self.config
        parts: list[np.ndarray] = []
        st, next_start = 0, 0
        for f, mask in zip(sorted(mm_features, key=lambda f: f.mm_position.offset), masks, strict=True):
            frames = list(self._iter_mm_grid_hw(input_tokens, [f], video_token_id=cfg.video_token_id,
                                                vision_start_token_id=cfg.vision_start_token_id,
                                                vision_end_token_id=cfg.vision_end_token_id,
                                                spatial_merge_size=cfg.vision_config.spatial_merge_size))
            per_frame = None if mask is None else mask.reshape(len(frames), -1)
            for i, (offset, h, w, n) in enumerate(frames):
                if per_frame is None and n != h * w:
                    raise ValueError("vtc's Qwen3-VL positions need unpruned items besides vtc's masked ones.")
                text_len = offset - st
                parts.append(np.broadcast_to(np.arange(text_len), (3, text_len)) + next_start)
                grid = np.indices((1, h, w)).reshape(3, -1) + text_len + next_start
                next_start = int(grid.max()) + 1
                if per_frame is not None:
                    grid = grid[:, per_frame[i]]
                parts.append(grid)
                st = offset + grid.shape[1]
        if st < len(input_tokens):
            text_len = len(input_tokens) - st
            parts.append(np.broadcast_to(np.arange(text_len), (3, text_len)) + next_start)
        positions = np.concatenate(parts, axis=1).reshape(3, -1)
        return torch.from_numpy(positions), int(positions.max()) + 1 - len(input_tokens)
