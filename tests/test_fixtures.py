from transformers import AutoModelForCausalLM, AutoTokenizer


def test_tiny_model_loads_and_tokenizes_marathi(tiny_model_dir, marathi_lines):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = tokenizer(marathi_lines[0])["input_ids"]
    assert tokenizer.decode(ids) == marathi_lines[0]
    assert model.config.num_hidden_layers == 2
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)
