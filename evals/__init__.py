"""The paper's safety benchmarks (arXiv 2307.09288, sec. 4.1 and 4.4, Tables 11 and 14): TruthfulQA, ToxiGen, BOLD."""
