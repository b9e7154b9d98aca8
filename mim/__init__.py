"""mimrepro's library.  Nothing here reads argv or YAML: the stages (stages/) hand it frozen dataclasses.

Layers, each importing only those above it:
* core: errors, config (dataclasses from plain data), checkpoint (files on disk), schedules,
  param_groups, vit, decoder, masking, encoder_file;
* data/: where datasets live (manifest), the embedded generator (synth, prepare), image folders,
  loaders and shared transforms;
* engine: the training loop every stage shares (`make_task`, `fit`);
* methods/ (students: scratch, mae, beit, img2vec), teacher/ (DINO, the frozen teacher),
  tokenizer/ (BEiT's tokenizer): one module per method, one shape for all;
* eval/ (fine-tune, linear probe, k-NN, token diversity) and report/ (tables, the teacher table).
"""
