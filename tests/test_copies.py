import pytest
import torch

from dinov3kit.weights.copies import SERIAL_ELEMENTS, concatenate, convert


def test_concatenate_equals_torch_cat_across_piece_boundaries():
    rows = SERIAL_ELEMENTS // 64 + 3  # neither part is a whole number of pieces
    parts = [torch.randn(rows, 64), torch.randn(rows + 5, 64), torch.randn(1, 64)]
    joined = concatenate(parts)
    assert torch.equal(joined, torch.cat(parts))
    assert joined.data_ptr() != parts[0].data_ptr()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_convert_equals_to(dtype):
    tensor = torch.randn(3, SERIAL_ELEMENTS + 7)
    converted = convert(tensor, torch.device("cpu"), dtype)
    assert converted.dtype == dtype
    assert torch.equal(converted, tensor.to(dtype))
    assert convert(tensor, torch.device("cpu"), None) is tensor
