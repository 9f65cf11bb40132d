"""The built-in model's recipe: how the model shipped in `iclft/models/builtin/` is produced and measured.

corpus      the pretraining episodes and the word-level tokenizer (pure functions of a seed)
pretrain    the resumable CPU pretraining run (`iclft pretrain`)
abilities   the ability table on held-out data (`iclft models eval`) and the model card

Loading any model, the built-in one included, is `iclft.models.load`; nothing there imports this package.
"""
