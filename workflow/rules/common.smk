# Helpers shared by every stage, one file per concern, included in the order they build on each other:
#   common/paths.smk      where each output lives (results/<profile>/...), and every rule's log and job statistics
#   common/config.smk     the settings derived from the config, and the checks across its fields
#   common/gpus.smk       GPUs per job, the GPU slots of one machine, the multi-GPU launcher
#   common/flags.smk      the `arrag` flags of the rules: one builder per decision (sampling, method, DAiD, ...)
#   common/inputs.smk     input functions: what a job reads, by method, source or config
#   common/resources.smk  host memory (mem_mb) per job

import dataclasses
import json
import os
import re
from shlex import quote
from types import SimpleNamespace

import pandas as pd
from snakemake.utils import Paramspace, validate

from arrag.methods import DAiDSettings, run_label
from arrag.validation import check_config_finite


validate(config, schema="../schemas/config.schema.yaml")  # fills the schema's defaults
check_config_finite(config)  # YAML's .nan and .inf pass the schema's minimum and maximum


include: "common/paths.smk"
include: "common/config.smk"
include: "common/gpus.smk"
include: "common/flags.smk"
include: "common/inputs.smk"
include: "common/resources.smk"
