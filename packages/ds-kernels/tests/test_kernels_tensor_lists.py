"""ds_kernels.tensor_lists: launch grouping and the device tables of a multi-tensor launch."""

import torch

from ds_kernels.tensor_lists import chunk_map, group_rows, pointer_table


def test_chunk_map_lists_every_block_of_every_tensor_once():
    numels = [1, 64, 65, 0, 200]
    table = chunk_map(numels, 64, torch.device("cpu"))
    expected = [(t, b) for t, n in enumerate(numels) for b in range((n + 63) // 64)]
    assert [tuple(row) for row in table.tolist()] == expected
    assert table.dtype == torch.int32


def test_tables_are_cached_by_sizes_and_pointers():
    a, b = torch.zeros(10), torch.zeros(20)
    cpu = torch.device("cpu")
    assert chunk_map([10, 20], 16, cpu) is chunk_map([10, 20], 16, cpu)
    assert chunk_map([10, 20], 16, cpu) is not chunk_map([10, 21], 16, cpu)
    cols = ([a, b], [b, a], None)
    first, aligned = pointer_table(cols, [0, 1], cpu)
    assert aligned and first is pointer_table(cols, [0, 1], cpu)[0]
    assert first.tolist() == [[a.data_ptr(), b.data_ptr(), 0, 10], [b.data_ptr(), a.data_ptr(), 0, 20]]
    c = torch.zeros(10)  # a gradient that moved: a new table with its pointer
    assert pointer_table(([c, b], [b, a], None), [0, 1], cpu)[0][0, 0].item() == c.data_ptr()


def test_groups_split_by_dtype_and_skip_empty_tensors():
    params = [torch.zeros(3), torch.zeros(0), torch.zeros(2, dtype=torch.bfloat16), torch.zeros(5)]
    groups = group_rows([params, params, None])
    assert [(g.dtypes[0], g.rows) for g in groups] == [(torch.float32, (0, 3)), (torch.bfloat16, (2,))]
    assert groups[0].dtypes[2] is None


def test_alignment_check_sees_offset_views():
    flat = torch.zeros(64)
    cpu = torch.device("cpu")
    assert pointer_table([[flat], [flat]], [0], cpu)[1]
    assert not pointer_table([[flat[1:]], [flat[2:]]], [0], cpu)[1]
