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
