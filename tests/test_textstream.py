"""TextStream: token bytes in, text a client may see out — whole characters, never a stop sequence."""

from __future__ import annotations

from llmkit.textstream import TextStream


def feed_all(stream: TextStream, *pieces: bytes) -> list[str]:
    return [stream.feed(piece) for piece in pieces]


def test_without_stop_sequences_text_passes_straight_through() -> None:
    stream = TextStream([])
    assert feed_all(stream, b"Hello", b", ", b"world") == ["Hello", ", ", "world"]
    assert stream.flush() == ""
    assert not stream.stopped


def test_a_stop_sequence_inside_one_piece_ends_the_text_before_it() -> None:
    stream = TextStream(["###"])
    assert stream.feed(b"answer### and more") == "answer"
    assert stream.stopped


def test_a_stop_sequence_spanning_two_pieces_is_found_and_never_sent() -> None:
    stream = TextStream(["STOP"])
    assert stream.feed(b"hello ST") == "hello "  # "ST" may be the start of STOP: held back
    assert not stream.stopped
    assert stream.feed(b"OP and the rest") == ""
    assert stream.stopped
    assert stream.flush() == ""


def test_a_stop_sequence_spread_over_many_pieces_is_found() -> None:
    stream = TextStream(["<end>"])
    assert feed_all(stream, b"a<", b"e", b"n", b"d>") == ["a", "", "", ""]
    assert stream.stopped


def test_held_back_text_is_released_once_it_cannot_be_a_stop() -> None:
    stream = TextStream(["STOP"])
    assert stream.feed(b"a ST") == "a "
    assert stream.feed(b"AR") == "STAR"
    assert not stream.stopped
    assert stream.feed(b" STO") == " "
    assert stream.feed(b"NE") == "STONE"
    assert not stream.stopped


def test_only_the_longest_possible_start_of_a_stop_is_held_back() -> None:
    stream = TextStream(["aab"])
    assert stream.feed(b"xaaa") == "xa"  # "aa" could still become "aab"; the first "a" cannot
    assert stream.feed(b"b") == ""
    assert stream.stopped


def test_the_earliest_of_several_stop_sequences_wins() -> None:
    stream = TextStream(["world", "lo"])
    assert stream.feed(b"hello world") == "hel"
    assert stream.stopped


def test_empty_stop_strings_are_ignored() -> None:
    stream = TextStream(["", "END"])
    assert stream.feed(b"some text") == "some text"
    assert not stream.stopped


def test_a_character_split_across_pieces_comes_out_whole() -> None:
    stream = TextStream([])
    assert stream.feed(b"caf\xc3") == "caf"  # the first byte of "é"
    assert stream.feed(b"\xa9!") == "é!"
    emoji = "🙂".encode()  # four bytes, one per piece
    assert feed_all(stream, *(emoji[i : i + 1] for i in range(4))) == ["", "", "", "🙂"]


def test_a_split_character_comes_out_whole_with_stop_sequences_too() -> None:
    stream = TextStream(["ü"])
    assert stream.feed(b"Gr" + "ü".encode()[:1]) == "Gr"
    assert not stream.stopped
    assert stream.feed("ü".encode()[1:] + b"n") == ""
    assert stream.stopped


def test_bytes_that_are_not_utf8_become_replacement_characters() -> None:
    stream = TextStream([])
    assert stream.feed(b"ok \xff") == "ok \ufffd"


def test_flush_releases_held_back_text_when_no_stop_came() -> None:
    stream = TextStream(["</s>"])
    assert stream.feed(b"the end </") == "the end "
    assert stream.flush() == "</"
    assert not stream.stopped


def test_flush_releases_an_unfinished_character_as_a_replacement() -> None:
    stream = TextStream([])
    assert stream.feed(b"x\xe2\x82") == "x"  # two of the three bytes of "€"
    assert stream.flush() == "\ufffd"


def test_nothing_comes_out_after_a_stop() -> None:
    stream = TextStream(["\n"])
    assert stream.feed(b"line one\nline two") == "line one"
    assert stream.stopped
    assert stream.flush() == ""
    assert stream.feed(b"more text") == ""
    assert stream.flush() == ""


def test_the_stop_sequence_that_ended_the_text_is_named() -> None:
    stream = TextStream(["END", "STOP", "ST"])
    assert stream.feed(b"go EN") == "go "
    assert stream.matched is None  # "EN" may yet be "END": held back, nothing matched
    assert stream.feed(b"D") == "" and stream.stopped and stream.matched == "END"
    tie = TextStream(["END", "STOP", "ST"])
    assert tie.feed(b"go STOP and END") == "go "
    assert tie.matched == "STOP"  # the earliest; of those that start there, the longest
