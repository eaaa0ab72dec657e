"""prepare-target-data: validate, clean and split the target data (and the labelled source domain)."""

from __future__ import annotations

import logging
from typing import Any

from crosstune.config import (
    DEFAULT_PARAMS_PATH,
    BaseParams,
    PrepareParams,
    load_section,
    to_dict,
)

logger = logging.getLogger(__name__)


def prepare_stage(train_path: str, test_path: str | None, out_dir: str,
                  params_path: str = DEFAULT_PARAMS_PATH, source_path: str | None = None) -> dict[str, Any]:
    """prepare-target-data: validate, clean and split (and read the labelled source domain when
    ``source_path`` holds one); writes ``out_dir``."""
    from crosstune.data.splitting import prepare_target_data, write_prepared

    base, params = load_section(BaseParams, params_path), load_section(PrepareParams, params_path)
    logger.info("prepare: train=%s test=%s source=%s params=%s", train_path, test_path, source_path, to_dict(params))
    data = prepare_target_data(train_path, test_path, params, base.seed, source_path)
    write_prepared(data, out_dir, params)
    return data.summary
