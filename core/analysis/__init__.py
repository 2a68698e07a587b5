"""Pure analysis functions of Agrawal, Girshick & Malik (ECCV 2014).

One module per analysis family; every function takes numpy arrays or torch tensors
(any device), computes in torch on that device and returns numpy:

- :mod:`.selectivity` — entropy curves, AuE, selectivity curves (Appendix, Fig. 1)
- :mod:`.precision_recall` — single-filter AP and PR curves (Sec. 4.1, Fig. 3)
- :mod:`.svm_ranking` — SVM filter ranking, nested subsets, layer mAP (Sec. 4.2,
  Fig. 4, Table 5, Tables 1-4/7 evaluation), grandmother-cell candidates
- :mod:`.streamed_svm` — layer mAP, ablations and filter ranking from products accumulated over row
  blocks (bounded memory)
- :mod:`.sharded` — the reducers above over shards or row blocks (bounded memory)
- :mod:`.overlap` — top-k filter set overlap (Fig. 5)
- :mod:`.sparsity` — non-zero fractions (Table 6)
- :mod:`.ablation` — binarize, sp-max, sp-shuffle and the Tables 7-8 runner (Sec. 5)
- :mod:`.detection` — VOC 2007 AP and detection matching (PASCAL-DET, Tables 1, 2, 4, 8)
- :mod:`.cka` — linear/debiased/minibatch CKA and unit matching between networks (beyond the paper)
"""
from __future__ import annotations

from core.analysis.ablation import (AblationResult, ablation_study, ablation_transforms,
                                    binarize, bootstrap_map, spatial_max, spatial_shuffle)
from core.analysis.cka import (GRAM_ALL_ITEMS, MinibatchCKA, cka_matrix, linear_cka, match_units,
                               minibatch_cka_matrix, unit_correlation)
from core.analysis.detection import DetectionEvalResult, evaluate_detections, voc_ap
from core.analysis.overlap import overlap_chance, shared_filters, topk_overlap, topk_sets
from core.analysis.precision_recall import (class_filter_ap, filter_ap, pr_curve,
                                            shuffled_label_ap)
from core.analysis.selectivity import aue, entropy_curves, selectivity_curve, shuffled_label_aue
from core.analysis.sparsity import (class_nonzero_fraction, nonzero_fraction, sparsity_meaningful,
                                    sparsity_summary, unit_nonzero_fraction)
from core.analysis.sharded import *  # noqa: F401,F403  (shard-reducing twins)
from core.analysis.sharded import __all__ as _SHARDED
from core.analysis.streamed_svm import (CountSketch, ablation_study_streamed, array_source,
                                        filter_ranking_streamed, linear_map_streamed, sketch_dim)
from core.analysis.svm_ranking import (PAPER_K, FilterRankingResult, LinearMapResult,
                                       SVMConfig, filters_needed, grandmother_cells, linear_map,
                                       paper_k_values, random_subset_ap, single_ap_ranking,
                                       subset_ap, svm_filter_ranking)

__all__ = [
    # selectivity (Appendix, Fig. 1)
    "entropy_curves", "aue", "selectivity_curve", "shuffled_label_aue",
    # precision / recall (Sec. 4.1, Fig. 3)
    "filter_ap", "class_filter_ap", "pr_curve", "shuffled_label_ap",
    # SVM ranking and layer mAP (Sec. 4, Fig. 4, Table 5, Tables 1-4/7)
    "PAPER_K", "SVMConfig", "FilterRankingResult", "LinearMapResult", "paper_k_values",
    "svm_filter_ranking", "subset_ap", "single_ap_ranking", "random_subset_ap",
    "filters_needed", "linear_map", "grandmother_cells",
    # the same linear classifiers on layers read in row blocks (Tables 1-4 at the paper's scale)
    "CountSketch", "sketch_dim", "linear_map_streamed", "ablation_study_streamed", "filter_ranking_streamed",
    "array_source",
    # overlap (Fig. 5)
    "topk_sets", "topk_overlap", "shared_filters", "overlap_chance",
    # sparsity (Table 6)
    "nonzero_fraction", "sparsity_summary", "class_nonzero_fraction", "sparsity_meaningful", "unit_nonzero_fraction",
    # ablations (Sec. 5, Tables 7-8)
    "binarize", "spatial_max", "spatial_shuffle", "ablation_transforms", "bootstrap_map",
    "AblationResult", "ablation_study",
    # detection (PASCAL-DET, VOC 2007 devkit)
    "voc_ap", "evaluate_detections", "DetectionEvalResult",
    # representation similarity between networks (Kornblith et al. 2019, Nguyen et al. 2021, Li et al. 2016)
    "linear_cka", "cka_matrix", "GRAM_ALL_ITEMS", "MinibatchCKA", "minibatch_cka_matrix", "match_units", "unit_correlation",
] + list(_SHARDED)  # shard-reducing twins of the above (core/analysis/sharded.py)
