"""The engine's front door: catalog of models and tasks, and every analysis cached on disk.

Pages call only these functions (widgets -> service -> figures). Each analysis is a
frozen request dataclass; its result is cached in the disk cache under the request's
hash plus the fingerprints of the stored features it reads, so a result is
recomputed exactly when its inputs change. Every result carries provenance.

One module per concern; this package re-exports their public names:

- :mod:`.catalog` — tasks and models: ids, aliases, loading, registering real data
- :mod:`.feature_store` — stored features, extraction backends, pooled features
- :mod:`.provenance` — provenance stamps and the cached-result helper
- :mod:`.analyses` — selectivity, filter AP, filters needed, overlap, sparsity, ablations, layer mAP
- :mod:`.detection_tasks` — PASCAL-DET (R-CNN detection mAP, one image's detections)
- :mod:`.scene_tasks` — SUN-CLS (scene accuracy over fixed partitions)
- :mod:`.compare` — what changed between two networks: layer x layer CKA, unit-by-unit change
- :mod:`.paper_tables` — each task's measure and the paper's Tables 1-4, 7, 8 beside its numbers
- :mod:`.headline_findings` — the ten headline findings checked on measured numbers
- :mod:`.warm` — the default analyses computed ahead so every page opens warm

Identifiers
-----------
model ids:   ``demo:pretrained``, ``demo:finetuned``, ``demo:fc-finetuned``, ``demo:scratch``,
             ``demo:snapshot-00050``, ``tv:alexnet`` (torch hub cache or random),
             ``tv:alexnet@/path/weights.pth`` (a local state dict).
task ids:    ``demo-detgt`` (box crops, paper's PASCAL-DET-GT), ``demo-cls`` (whole images,
             multi-label, PASCAL-CLS), ``demo-scene`` (SUN-CLS analogue), and real data
             registered with :func:`register_task` (e.g. VOC 2007 from a local VOCdevkit).
"""
from __future__ import annotations

from core.errors import DataMissingError, InputError
from core.store.extraction import Progress
from core.service.analyses import (TABLE_CLASSIFIER, AblationRequest, FilterAPRequest, FilterAPResult,
                                   FiltersNeededResult, LayerMapRequest, OverlapResult, RankingRequest,
                                   SelectivityRequest, SelectivityResult, SparsityRequest, ablation,
                                   cluster_order, entropy_curve, filter_ap, filters_needed, filters_needed_table,
                                   grandmother_cells, layer_map, layer_map_table, overlap, pr_curves, selectivity,
                                   shared_filters, sparsity, svm_ranking, top_activations)
from core.service.catalog import (MODEL_ALIASES, TaskSpec, build_demo, checkpoint_series, config_errors,
                                  configure_from_env,
                                  demo_is_built, demo_summary, demo_tasks, demo_variants, first_layer_weights,
                                  layer_choices, layer_shapes, layers_of, load_detection, load_model, load_set,
                                  model_info, model_label, model_layers, models, register_imagefolder,
                                  register_model, register_sun397, register_task, register_voc,
                                  register_voc_detection, resolve_model, task, tasks, training_curves)
from core.service.compare import (MEASURES, POOLS, WEAK_MATCH, CKARequest, CKAResult, UnitChangeRequest,
                                  UnitChangeResult, cka_layers, compare_summary, filter_weights, most_changed,
                                  snapshot_cka, snapshot_models, unit_change)
from core.service.detection_tasks import (DEMO_DETECTION, REAL_DETECTION, DetectionRequest, asdict_config,
                                          detection_config, detection_images, detection_map, detection_result,
                                          detections, is_detection_cached)
from core.service.feature_store import (ComputeBackend, cache_status, compute_backend, extract_all, features,
                                        is_extracted, pooled)
from core.service.headline_findings import findings, findings_provenance, findings_summary, pretrained_counterpart
from core.service.paper_tables import (PAPER_TABLE_TASKS, PAPER_TABLES, finetune_from_table, paper_column,
                                       paper_table, snapshot_table, task_ablation, task_metric)
from core.service.provenance import Provenance
from core.service.scene_tasks import SceneRequest, scene_accuracy
from core.service.warm import warm_demo, warm_plan
from core.store.cache import storage_problem

__all__ = [
    "DataMissingError", "InputError", "Progress",
    # catalog
    "TaskSpec", "MODEL_ALIASES", "register_task", "tasks", "task", "models", "resolve_model", "load_model",
    "load_set", "load_detection", "model_info", "model_label", "layers_of", "layer_shapes", "model_layers", "layer_choices",
    "first_layer_weights",
    "demo_variants", "training_curves", "demo_summary", "demo_tasks", "demo_is_built", "build_demo",
    "checkpoint_series",
    "register_model", "register_voc",
    "register_voc_detection", "register_sun397", "register_imagefolder", "configure_from_env", "config_errors",
    # stored features
    "ComputeBackend", "compute_backend", "features", "extract_all", "is_extracted", "pooled", "cache_status",
    # results
    "Provenance", "storage_problem",
    # per-layer analyses
    "TABLE_CLASSIFIER", "SelectivityRequest", "SelectivityResult", "selectivity", "entropy_curve",
    "FilterAPRequest", "FilterAPResult", "filter_ap", "pr_curves", "top_activations", "RankingRequest",
    "svm_ranking", "FiltersNeededResult", "filters_needed", "grandmother_cells", "filters_needed_table",
    "OverlapResult", "overlap",
    "shared_filters", "cluster_order", "SparsityRequest", "sparsity", "AblationRequest", "ablation", "LayerMapRequest",
    "layer_map", "layer_map_table",
    # what changed between two networks
    "POOLS", "MEASURES", "WEAK_MATCH", "CKARequest", "CKAResult", "cka_layers", "snapshot_models", "snapshot_cka",
    "UnitChangeRequest", "UnitChangeResult", "unit_change", "most_changed", "filter_weights", "compare_summary",
    # detection and scene tasks
    "DEMO_DETECTION", "REAL_DETECTION", "DetectionRequest", "detection_config", "detection_result",
    "asdict_config", "detection_map", "is_detection_cached", "detection_images", "detections",
    "SceneRequest", "scene_accuracy",
    # the paper's tables and findings
    "task_metric", "task_ablation", "PAPER_TABLES", "PAPER_TABLE_TASKS", "paper_column", "paper_table",
    "snapshot_table", "finetune_from_table", "findings", "findings_provenance", "findings_summary",
    "pretrained_counterpart",
    # warming
    "warm_plan", "warm_demo",
]
