"""Character embedding + bidirectional LSTM sentiment classifier, invariant to right-padding."""

from __future__ import annotations

import torch
from torch import nn

# Multiplier of the n-gram hash; a large prime spreads (previous, current) pairs over the buckets.
NGRAM_HASH_PRIME = 1_000_003


class SentimentLSTM(nn.Module):
    """tokens int64 [N, T] (0 pads on the right), lengths int64 [N] -> logits [N, 2].

    Two views of the text feed one linear classifier:
    - a bag of character unigrams, bigrams and trigrams (the n-grams hashed into buckets from the
      token ids), summed over the text: on these short reviews it carries most of the accuracy,
      as char n-gram TF-IDF + logistic regression shows;
    - a bidirectional LSTM over the character embeddings, mean- and max-pooled: word order.

    Padding never reaches a valid position: n-grams look only backwards, the forward LSTM reads
    left to right, the backward one reads each row reversed within its own length, and every sum
    or maximum covers valid positions only. (pack_padded_sequence would do the same, but does not
    export to ONNX with dynamic shapes.)
    """

    def __init__(
        self,
        vocab_size: int,
        embedding_size: int = 32,
        ngram_buckets: int = 262144,
        hidden_size: int = 64,
        dropout: float = 0.3,
    ):
        super().__init__()
        self.ngram_buckets = ngram_buckets
        # sparse: each step touches few rows of the large n-gram table, so the optimizer updates only those.
        self.chars = nn.Embedding(vocab_size, embedding_size, sparse=True)
        self.ngrams = nn.Embedding(ngram_buckets, embedding_size, sparse=True)
        # Small starting vectors: a bag of large random ones lets the model memorise training texts
        # and costs about a point of held-out accuracy.
        nn.init.normal_(self.chars.weight, std=0.01)
        nn.init.normal_(self.ngrams.weight, std=0.01)
        self.dropout = nn.Dropout(dropout)
        self.forward_lstm = nn.LSTM(embedding_size, hidden_size, batch_first=True)
        self.backward_lstm = nn.LSTM(embedding_size, hidden_size, batch_first=True)
        self.classifier = nn.Linear(embedding_size + 4 * hidden_size, 2)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device).unsqueeze(0)  # [1, T]
        lengths = lengths.unsqueeze(1)  # [N, 1]
        valid = positions < lengths  # [N, T]
        mask = valid.unsqueeze(2)

        chars = self.chars(tokens)
        previous = shift_right(tokens)  # the pad id before the first character marks the start
        bigrams = self.ngrams(self.bucket(previous, tokens))
        trigrams = self.ngrams(self.bucket(self.bucket(shift_right(previous), previous), tokens))
        # Dividing by sqrt(length) rather than length keeps long texts' evidence from fading.
        bag = (chars + bigrams + trigrams).masked_fill(~mask, 0.0).sum(dim=1) / lengths.to(chars.dtype).sqrt()

        states = self.bidirectional_states(self.dropout(chars), valid, lengths)  # [N, T, 2H]
        mean = states.masked_fill(~mask, 0.0).sum(dim=1) / lengths.to(states.dtype)
        maximum = states.masked_fill(~mask, float("-inf")).amax(dim=1)
        return self.classifier(self.dropout(torch.cat([bag, mean, maximum], dim=1)))

    def bucket(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        return (first * NGRAM_HASH_PRIME + second) % self.ngram_buckets

    def bidirectional_states(self, embedded: torch.Tensor, valid: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(embedded.shape[1], device=embedded.device).unsqueeze(0)
        # Position t of a row reads position length-1-t; padding positions stay where they are.
        # The same index puts the backward states back in reading order.
        reverse_index = torch.where(valid, lengths - 1 - positions, positions).unsqueeze(2)
        forward_states, _ = self.forward_lstm(embedded)
        reversed_states, _ = self.backward_lstm(embedded.gather(1, reverse_index.expand(-1, -1, embedded.shape[2])))
        # expand(-1, -1, H), not expand_as: the export loses the LSTM output's dynamic sequence
        # length and expand_as would fix it at the example's.
        backward_states = reversed_states.gather(1, reverse_index.expand(-1, -1, reversed_states.shape[2]))
        return torch.cat([forward_states, backward_states], dim=2)


def shift_right(tokens: torch.Tensor) -> torch.Tensor:
    """Each position's previous token; pad (0) before the first."""
    return torch.cat([torch.zeros_like(tokens[:, :1]), tokens[:, :-1]], dim=1)


class TfidfLogit(nn.Module):
    """A linear model over a text's character 1-3-grams, weighted like scikit-learn's
    TfidfVectorizer(sublinear_tf=True) and L2-normalised: tokens int64 [N, T], lengths [N] ->
    the positive-minus-negative logit [N].

    Unigrams are token ids; bigrams and trigrams are hashed into `buckets` each (with the pad id
    before the first character marking the start). `idf` (0 for n-grams to ignore), `coef` and
    `intercept` come from a logistic regression fitted outside (export/train_sentiment.py).
    Term frequencies are counted by comparing every valid position with every other, so padding
    changes nothing.
    """

    def __init__(self, vocab_size: int, buckets: int):
        super().__init__()
        self.vocab_size, self.buckets = vocab_size, buckets
        self.register_buffer("idf", torch.zeros(vocab_size + 2 * buckets))
        self.register_buffer("coef", torch.zeros(vocab_size + 2 * buckets))
        self.register_buffer("intercept", torch.zeros(()))

    def ngram_ids(self, tokens: torch.Tensor) -> torch.Tensor:
        """[N, T] -> [N, T, 3]: the index of the unigram, bigram and trigram ending at each position."""
        previous = shift_right(tokens)
        bigrams = (previous * NGRAM_HASH_PRIME + tokens) % self.buckets
        trigrams = ((shift_right(previous) * NGRAM_HASH_PRIME + previous) % self.buckets * NGRAM_HASH_PRIME + tokens) % self.buckets
        return torch.stack([tokens, self.vocab_size + bigrams, self.vocab_size + self.buckets + trigrams], dim=2)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device).unsqueeze(0)
        valid = (positions < lengths.unsqueeze(1)).unsqueeze(2)  # [N, T, 1]
        ids = self.ngram_ids(tokens)  # [N, T, 3]
        # tf of the n-gram at each valid position: how many valid positions hold the same one.
        same = (ids.unsqueeze(2) == ids.unsqueeze(1)) & valid.unsqueeze(1)  # [N, T, T, 3]
        tf = same.sum(dim=2).clamp(min=1).to(self.idf.dtype)  # [N, T, 3]
        weight = (1.0 + torch.log(tf)) * self.idf[ids]  # each distinct n-gram's tf-idf, at each of its tf positions
        weight = weight.masked_fill(~valid, 0.0)
        norm = (weight.pow(2) / tf).sum(dim=(1, 2)).sqrt().clamp(min=1e-12)
        return (weight / tf * self.coef[ids]).sum(dim=(1, 2)) / norm + self.intercept


class SentimentEnsemble(nn.Module):
    """The LSTM's logits plus the TF-IDF model's, split evenly between the two classes."""

    def __init__(self, lstm: SentimentLSTM, tfidf: TfidfLogit):
        super().__init__()
        self.lstm, self.tfidf = lstm, tfidf

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        half = 0.5 * self.tfidf(tokens, lengths).unsqueeze(1)
        return self.lstm(tokens, lengths) + torch.cat([-half, half], dim=1)
