"""fashion_caption: COCO caption metrics (pycocoevalcap) and the ALS/SLS fashion metrics as an `evaluate` module.

A thin wrapper: the scoring lives in `fashioncap.metrics.coco_caption`, so this module and
`fashioncap.metrics.compute_caption_metrics` always return the same numbers.
"""

import datasets
import evaluate

from fashioncap.metrics.coco_caption import compute_caption_metrics

_DESCRIPTION = """\
BLEU-1..4, METEOR 1.5, ROUGE-L, CIDEr(-D) and SPICE exactly as the COCO caption evaluation (pycocoevalcap)
computes them after PTB tokenization, on its scale (0-1, CIDEr 0-10); plus ALS (attribute recall) and SLS
(category accuracy), the fashioncap training rewards averaged over images. A metric that cannot run here
(SPICE without Stanford CoreNLP 3.6.0) is None, with its reason under "unavailable".
"""

_CITATION = """\
@inproceedings{chen2015microsoft,
  title={Microsoft COCO Captions: Data Collection and Evaluation Server},
  author={Chen, Xinlei and Fang, Hao and Lin, Tsung-Yi and Vedantam, Ramakrishna and Gupta, Saurabh and
          Doll{\\'a}r, Piotr and Zitnick, C. Lawrence},
  journal={arXiv preprint arXiv:1504.00325},
  year={2015}
}
@inproceedings{yang2020fashion,
  title={Fashion Captioning: Towards Generating Accurate Descriptions with Semantic Rewards},
  author={Yang, Xuewen and Zhang, Heming and Jin, Di and Liu, Yingru and Wu, Chi-Hao and Tan, Jianchao and
          Xie, Dongqing and Wang, Jue and Wang, Xin},
  booktitle={ECCV},
  year={2020}
}
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): one generated caption per image.
    references (list of list of str): the reference captions of each image.
    attributes (list of list of str or None, optional): each image's reference attributes; None for an image
        falls back to the NOUN/ADJ words of its references. Given: ALS is computed.
    categories (list of int or None, optional): each image's category id. Given: SLS is computed.
    category_wordmap (dict, optional): category id -> name or list of names (a data dir's categories.json).
Returns:
    dict: "BLEU-1".."BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE", ["ALS"], ["SLS"], "num_images",
    "unavailable" (metric -> reason, for the metrics that are None).
Examples:
    >>> metric = evaluate.load("path/to/fashioncap/metrics/fashion_caption")
    >>> metric.compute(predictions=["a red silk dress"], references=[["a red silk dress with a bow"]])["ROUGE-L"]
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class FashionCaption(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            module_type="metric",
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string"),
                    "references": datasets.List(datasets.Value("string")),
                }
            ),
            codebase_urls=["https://github.com/salaniz/pycocoevalcap"],
            reference_urls=["https://arxiv.org/abs/1504.00325", "https://arxiv.org/abs/2008.02693"],
        )

    def _compute(self, predictions, references, attributes=None, categories=None, category_wordmap=None):
        for name, column in (("attributes", attributes), ("categories", categories)):
            if column is not None and len(column) != len(predictions):
                raise ValueError(f"{len(predictions)} predictions but {len(column)} {name}")
        return compute_caption_metrics(
            dict(enumerate(predictions)),
            dict(enumerate(references)),
            attributes=None if attributes is None else dict(enumerate(attributes)),
            categories=None if categories is None else dict(enumerate(categories)),
            category_wordmap=category_wordmap,
        )
