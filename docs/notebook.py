# %% [markdown]
# # iclft from a notebook
#
# Run a study, read its headline claims, plot one of them from the raw records, load the run back, and capture
# the residual stream of a prompt. Jupyter (jupytext), VS Code and PyCharm run each `# %%` cell;
# `python docs/notebook.py` runs them all (tests/test_api.py does, in a temporary directory). Everything is
# written under `runs/` in the working directory; the quick preset takes about a minute on a laptop CPU.

# %%
import torch

import iclft

# The same run as `iclft run dual --quick --out runs/quick-dual`: same checks, same files. Rerunning the cell
# resumes (finished units are kept) and a finished run is only read back. Spec fields go as keywords, like
# --set: `seeds=3`, `**{"lora.steps": 5}` (see `iclft spec dual` for the fields).
run = iclft.run("dual", out="runs/quick-dual", quick=True)
print(run)

# %% [markdown]
# One row per claim of the paper: this run's value with its 95% interval across seeds, the paper's value and a
# verdict. (The quick preset has too few seeds for any verdict: it is for trying things out.)

# %%
run.headlines[["claim", "shown", "paper", "verdict"]]

# %% [markdown]
# The headline "ICL and FT-KV change the attention output in a shared direction" is SimAOU, the cosine between
# the attention-output updates of ICL and of FT-KV, compared with a random update. `run.records` has one row per
# seed, query and layer: plot both by layer.

# %%
by_layer = run.records.groupby("layer")[["simaou", "simaou_random"]].mean()
ax = by_layer.plot(marker="o", xlabel="layer", ylabel="cosine (mean over seeds and queries)",
                   title="SimAOU: ICL vs FT-KV attention-output updates")
ax.axhline(0, color="grey", linewidth=0.5)
ax.figure.savefig("runs/simaou_by_layer.png", dpi=150, bbox_inches="tight")
print(by_layer.round(3).to_string())

# %% [markdown]
# A finished run directory reads back the same, with its checksums verified (an edited file raises
# `iclft.UserError`). Its report, figures, spec and manifest are at hand too.

# %%
same = iclft.load("runs/quick-dual")
assert same.records.equals(run.records) and same.summary == run.summary
print(same.report, sorted(same.figures), same.spec.seeds, same.manifest["model"]["model"])

# %% [markdown]
# Activations: the residual stream after every block at the last token of each prompt (TransformerLens' names,
# `blocks.{layer}.resid_post`), for a zero-shot prompt and for the same query after two demonstrations, in the
# built-in model's task format.

# %%
instruction = "Classify the sentiment of each tweet as positive or negative.\n\n"
query = "Tweet: my phone died again and it is not even 11am\nSentiment:"
demos = "Tweet: love this sunny weather!\nSentiment: positive\n\nTweet: so tired of waiting\nSentiment: negative\n\n"
prompts = [instruction + query, instruction + demos + query]
cache = iclft.capture("builtin", prompts, sites=["resid_post"], positions="last")
resid = cache.stack("resid_post")  # (prompts, layers, d_model)
cos = torch.nn.functional.cosine_similarity(resid[0], resid[1], dim=-1)  # per layer
print(f"resid_post {tuple(resid.shape)}; cosine zero-shot vs 2 demonstrations by layer:",
      [round(float(c), 3) for c in cos])
