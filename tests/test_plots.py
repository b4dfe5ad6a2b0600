"""The one way a picture is drawn, saved and closed."""

import pytest


def test_a_figure_is_saved_at_its_resolution_into_a_new_folder_and_closed(tmp_path):
    import matplotlib.pyplot as plt
    from PIL import Image

    from graftline.tasks import plots

    path = tmp_path / "new" / "folder" / "picture.png"
    with plots.figure(path, dpi=50, ncols=2, figsize=(4, 3)) as (fig, (left, right)):
        left.plot([0, 1], [1, 0])
        right.bar(["a", "b"], [1, 2])
        assert plt.fignum_exists(fig.number)
    with Image.open(path) as picture:
        assert picture.size == (200, 150)  # figsize x dpi: no cropping of the figure
    assert not plt.fignum_exists(fig.number)


def test_a_drawing_that_fails_saves_nothing_and_still_closes_the_figure(tmp_path):
    import matplotlib.pyplot as plt

    from graftline.tasks import plots

    path = tmp_path / "broken.png"
    with pytest.raises(ValueError, match="bad data"), plots.figure(path, dpi=50) as (fig, _):
        raise ValueError("bad data")
    assert not path.exists() and not plt.fignum_exists(fig.number)
