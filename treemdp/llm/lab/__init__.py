"""The LLM over-optimization lab (Gao et al.'s synthetic setting on causal LMs; docs/llm.md).

    gold     the gold reward you control: toy-lab golds on the tree language, the synthetic
             TL;DR scorer, a reward model, or module:function (:mod:`.gold`)
    measure  sampled KL, gold and win rate with standard errors; exact values by enumeration
    study    a grid of DAA runs over shared SFT / pairs / reference, evaluated per checkpoint
    report   tables, Gao et al. fits and figures (the toy lab's fit code), best-of-n
"""
