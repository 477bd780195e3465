"""DPG-Bench's file layout, which both the real benchmark and the mini world's stand-in (arrag.data.mini_dpg) use,
and which the scorer (arrag.evaluation.dpg) reads:

    <dir>/prompts/<item_id>.txt   one dense prompt per item
    <dir>/dpg_bench.csv           the questions, one row per question, in the columns below
"""

# The question CSV's columns, in dpg_bench.csv's order. `dependency` lists the ids of a question's parents
# ("0": none); `tuple` names its category, e.g. "attribute - color (bicycle, red)".
COLUMNS = (
    "item_id",
    "text",
    "keywords",
    "proposition_id",
    "dependency",
    "category_broad",
    "category_detailed",
    "tuple",
    "question_natural_language",
)
