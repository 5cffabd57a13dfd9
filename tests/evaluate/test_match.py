from fusecli.evaluate.match import exact_match


def test_case_and_surrounding_or_repeated_whitespace_do_not_count():
    assert exact_match(" Paris \n", "paris")
    assert exact_match("New   York", "new york")
    assert not exact_match("Paris.", "Paris")
    assert not exact_match("Paris France", "Paris")
