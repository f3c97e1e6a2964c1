"""Training of the demo pair: a tiny Gemma-4 target and its DFlash drafter, on GSM8K's train split.

``corpus`` renders the data as Gemma-4 chat turns; ``target`` and ``drafter`` train the two models;
``dflash`` is the drafter's forward pass as vLLM runs it; ``pair`` is the compact on-disk format that
ships in ``assets/demo_pair/``; ``train`` ties them together (``make train-demo``).
"""
