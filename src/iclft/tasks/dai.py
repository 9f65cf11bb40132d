"""Dai et al. (2023)'s six classification datasets, with their templates and label words.

Loaded through `datasets` from the hub, so only when online (or with a cached copy). Names are
`dai/<dataset>`: sst2, sst5, mr, subj, agnews, cb. Templates follow the paper's appendix table; the
label word is what follows the template's answer prefix. Label words are kept as the paper writes them
(AGNews' are capitalised). Multi-input datasets (CB) render their fields into the `input` text, so
every task keeps the one-field `template.format(input=...)` contract.
"""

from __future__ import annotations

from dataclasses import dataclass

from iclft import UserError
from iclft.tasks.base import Example, Task


@dataclass(frozen=True)
class DaiDataset:
    hub: tuple[str, ...]  # load_dataset(*hub)
    train_split: str
    test_split: str
    instruction: str
    template: str
    label_words: tuple[str, ...]
    fields: tuple[str, ...]  # hub columns rendered into the input
    input_format: str = "{0}"  # how `fields` become the input text
    label_field: str = "label"


DAI_DATASETS: dict[str, DaiDataset] = {
    "sst2": DaiDataset(("glue", "sst2"), "train", "validation", "", "Sentence: {input}\nLabel:",
                       ("negative", "positive"), ("sentence",)),
    "sst5": DaiDataset(("SetFit/sst5",), "train", "test", "", "Sentence: {input}\nLabel:",
                       ("terrible", "bad", "neutral", "good", "great"), ("text",)),
    "mr": DaiDataset(("rotten_tomatoes",), "train", "test", "", "Review: {input}\nSentiment:",
                     ("negative", "positive"), ("text",)),
    "subj": DaiDataset(("SetFit/subj",), "train", "test", "", "Input: {input}\nType:",
                       ("objective", "subjective"), ("text",)),
    "agnews": DaiDataset(("ag_news",), "train", "test",
                         "Classify the news articles into the categories of World, Sports, Business, and Technology.",
                         "Article: {input}\nAnswer:", ("World", "Sports", "Business", "Technology"), ("text",)),
    "cb": DaiDataset(("super_glue", "cb"), "train", "validation", "", "{input}\nAnswer:",
                     ("true", "false", "neither"), ("premise", "hypothesis"),
                     input_format="{0}\nQuestion: {1} True, False, or Neither?"),
}
# Label ids of the hub datasets, in hub order, map to `label_words` in the same order:
# glue/sst2 0=negative 1=positive; SetFit/sst5 0..4 = very negative..very positive; rotten_tomatoes
# 0=neg 1=pos; SetFit/subj 0=objective 1=subjective; ag_news 0=World 1=Sports 2=Business 3=Sci/Tech;
# super_glue/cb 0=entailment (true) 1=contradiction (false) 2=neutral (neither).


def dai_task(name: str) -> Task:
    """`dai/<dataset>` (or the bare dataset name) as a Task; needs the network or a `datasets` cache."""
    key = name.split("/", 1)[1] if name.startswith("dai/") else name
    if key not in DAI_DATASETS:
        raise UserError(f"unknown Dai et al. dataset {key!r}; choose one of {', '.join(DAI_DATASETS)}")
    d = DAI_DATASETS[key]
    from iclft.tasks.hub import load_hub_dataset

    ds = load_hub_dataset(*d.hub)

    def conv(split):
        out = []
        for row in ds[split]:
            label = int(row[d.label_field])
            if label < 0:  # hidden test labels
                continue
            text = d.input_format.format(*(str(row[f]).strip() for f in d.fields))
            out.append(Example(text, d.label_words[label]))
        return out

    return Task(
        name=f"dai/{key}",
        train=conv(d.train_split),
        test=conv(d.test_split),
        instruction=d.instruction,
        template=d.template,
        label_words=list(d.label_words),
        description=f"Dai et al. (2023) {key} via `datasets` ({'/'.join(d.hub)}), needs network",
    )
